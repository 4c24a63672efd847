"""Any Hugging Face causal LM: the all-methods matrix on tiny random Qwen2, Qwen2.5 + YaRN, Qwen3,
Mistral, Phi-3, Llama 3.1-style (``rope_type: llama3``) and GPT-2 (no RoPE) models.

Every registered method either runs prefill + decode through ``longreach.ask`` and leaves the model as
it found it, or is refused in one line where the refusal is expected (:data:`REFUSED`): a method that
should run and is refused fails the test, and so does one that runs where it should be refused.

Independent references: eager attention weights (``output_attentions``) for the queries and keys
recomputed from each architecture's own projections (fused qkv, q/k norms, biases, partial rotary,
no RoPE); each model's own rotary module at the grouped positions for self-extend on models that
already scale RoPE (llama3 frequencies, YaRN's attention factor).
"""

from __future__ import annotations

import pytest
import torch
from conftest import EXTRA_BUILDERS, tiny_llama3, tiny_mistral, tiny_phi3, tiny_qwen25_yarn, wrap
from test_attention_methods import fake_module, qkv
from test_matrix import run_spec, spec_for
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from longreach.errors import SpecError
from longreach.qk import attention_modules, hidden_input, rotary_inputs
from longreach.readers.infiniretri import _attention_rows
from longreach.spec import REGISTRY, Plan, build_method, method_names, parse_spec

ROPE = {n for n in method_names() if REGISTRY[n].slot == "rope"}
REROTATE = {"self-extend", "streaming", "longheads"}  # move cached keys to other positions by re-rotating
#: (architecture -> methods refused, with a phrase the one-line refusal must contain)
REFUSED: dict[str, tuple[set[str], str]] = {
    "tiny-gpt2": (ROPE | REROTATE | {"logn", "kvquant", "flexrope", "v2pe"}, "RoPE"),  # kvquant: pre-RoPE keys by default
    "tiny-llama3": (ROPE, "rope_type='llama3'"),  # would replace the llama3 scaling, not compose with it
    "tiny-qwen25-yarn": (ROPE, "rope_type='yarn'"),
}


def _refused(arch: str, name: str) -> str | None:
    methods, phrase = REFUSED.get(arch, (set(), ""))
    return phrase if name in methods else None


@pytest.fixture(scope="module", params=sorted(EXTRA_BUILDERS))
def arch(request):
    return request.param


# --------------------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_or_is_refused_as_expected(arch, name):
    lm = wrap(EXTRA_BUILDERS[arch](), arch)
    spec = spec_for(name)
    phrase = _refused(arch, name)
    if phrase is not None:
        with pytest.raises(SpecError) as exc:
            Plan.from_spec(spec).check(lm.info)
        assert "\n" not in str(exc.value) and phrase in str(exc.value)
        return
    Plan.from_spec(spec).check(lm.info)  # a refusal here fails the test: this method must run
    run_spec(lm, spec)


@pytest.mark.parametrize("spec", ["none", "kvquant:pre_rope=false,group=16,residual=32",
                                  "snapkv+infiniretri:chunk=64,top_k=16"])
def test_a_model_without_rope_runs_none_cache_and_reader_methods(spec):
    lm = wrap(EXTRA_BUILDERS["tiny-gpt2"](), "tiny-gpt2")
    assert not lm.info.has_rope
    run_spec(lm, spec)


# ------------------------------------------------------------------------------------- model info
def test_model_info_reads_every_architecture():
    infos = {a: wrap(b(), a).info for a, b in EXTRA_BUILDERS.items()}
    for a, info in infos.items():
        assert info.layers == 2 and info.heads == 4 and info.layer_types == ["full_attention"] * 2, a
        assert info.kv_heads == (4 if a == "tiny-gpt2" else 2) and info.has_rope == (a != "tiny-gpt2"), a
    assert infos["tiny-gpt2"].rope == {"full_attention": {}} and infos["tiny-gpt2"].window == 256
    assert infos["tiny-llama3"].rope_type() == "llama3" and infos["tiny-llama3"].head_dim == 16
    assert infos["tiny-llama3"].window == 256  # factor 8 x original 16 = 128 < max_position_embeddings
    assert infos["tiny-qwen25-yarn"].window == 4 * 64  # YaRN factor 4 over the 64-token original window
    assert infos["tiny-phi3"].rotary_dim() == 8 and infos["tiny-qwen3"].head_dim == 8


def test_model_info_partial_rotary_and_sliding_window_on_every_layer():
    phi = wrap(tiny_phi3(partial=0.5), "phi-partial")
    assert phi.info.rotary_dim() == 4 and phi.info.head_dim == 8
    assert phi.model.model.rotary_emb.inv_freq.shape == (2,)  # what transformers rotates: 4 channels
    v01 = wrap(tiny_mistral(sliding=64), "mistral-v01").info  # Mistral v0.1: window on every layer
    assert v01.layer_types == ["sliding_attention"] * 2 and v01.sliding_window == 64
    assert wrap(tiny_mistral(sliding=4096), "m").info.layer_types == ["full_attention"] * 2  # > window: none


# ---------------------------------------------------------------- queries and keys of any architecture
def _eager_and_ours(model, ids, layer):
    """(ours, eager): attention probabilities of every row in ``layer``, (H, T, T) each."""
    box = {}
    module = attention_modules(model)[layer]

    def hook(mod, args, kwargs):
        box["in"] = (hidden_input(args, kwargs), *rotary_inputs(args, kwargs))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            ref = model(torch.tensor([ids]), output_attentions=True).attentions[layer][0]
    finally:
        handle.remove()
    hidden, cos, sin = box["in"]
    with torch.inference_mode():
        return _attention_rows(module, hidden, cos, sin, 0), ref.float()


@pytest.mark.parametrize("build", [*EXTRA_BUILDERS.values(), lambda: tiny_phi3(partial=0.5)],
                         ids=[*EXTRA_BUILDERS, "tiny-phi3-partial"])
def test_recomputed_attention_equals_eager_on_every_architecture(build):
    """infiniretri / SnapKV recompute q and k from the module's own weights: fused qkv_proj (Phi-3),
    c_attn (GPT-2, no RoPE), biases (Qwen2), q/k norms (Qwen3), partial rotary, scaled RoPE."""
    model = build()
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    for layer in (0, 1):
        ours, ref = _eager_and_ours(model, ids, layer)
        assert ours.shape == (4, 40, 40)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ models that already scale RoPE
def _rope_at(rotary, x, positions):
    """x (B, H, T, D) rotated by the model's own rotary module at ``positions`` (T,)."""
    cos, sin = rotary(x, positions[None])  # (1, T, D): the model's frequencies and attention factor
    out, _ = apply_rotary_pos_emb(x, x, cos, sin)
    return out


@pytest.mark.parametrize("build", [tiny_llama3, tiny_qwen25_yarn], ids=["llama3", "qwen25-yarn"])
def test_self_extend_composes_with_the_scaling_a_model_carries(build):
    """Grouped attention re-rotates with the model's own (scaled) frequencies: equal to eager attention
    with q and k rotated by the model's rotary module at the paper's grouped positions."""
    lm = wrap(build(), "scaled")
    rotary = lm.model.model.rotary_emb
    t, w, g, d = 90, 16, 3, lm.info.head_dim
    fn = build_method(parse_spec(f"self-extend:window={w},group={g}")[0]).attention_function(lm.model, lm.info)
    q0, k0, v = qkv(t, d=d, seed=4)
    m = torch.arange(t)
    out, _ = fn(fake_module(), _rope_at(rotary, q0, m), _rope_at(rotary, k0, m), v, None, scaling=0.25,
                position_ids=m[None])
    qn, kn = _rope_at(rotary, q0, m), _rope_at(rotary, k0, m).repeat_interleave(2, 1)
    qg = _rope_at(rotary, q0, m // g + w - w // g)
    kg = _rope_at(rotary, k0, m // g).repeat_interleave(2, 1)
    dist = m[:, None] - m[None]
    s = torch.where(dist < w, qn @ kn.transpose(-1, -2), qg @ kg.transpose(-1, -2)) * 0.25
    ref = (s.masked_fill(dist < 0, float("-inf")).softmax(-1) @ v.repeat_interleave(2, 1)).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    default = 1.0 / (lm.info.rope_theta() ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    assert not torch.allclose(rotary.inv_freq.double(), default)  # the model's scaling is really there


@pytest.mark.parametrize("build,kind", [(tiny_llama3, "llama3"), (tiny_qwen25_yarn, "yarn")])
def test_scaled_rope_refusals_name_the_rope_type_and_the_fix(build, kind):
    info = wrap(build(), "scaled").info
    for name in sorted(ROPE):
        with pytest.raises(SpecError) as exc:
            Plan.from_spec(name).check(info)
        assert f"rope_type='{kind}'" in str(exc.value) and "self-extend" in str(exc.value)
    with pytest.raises(SpecError, match="drop base/target"):
        Plan.from_spec("logn:base=1000000").check(info)
    Plan.from_spec("logn").check(info)  # query scaling alone composes


def test_dynamic_rope_types_refuse_rerotation():
    lm = wrap(tiny_llama3(), "dyn")
    lm.info.rope["full_attention"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    for name in sorted(REROTATE):
        with pytest.raises(SpecError, match="rope_type='dynamic'"):
            Plan.from_spec(spec_for(name)).check(lm.info)
    Plan.from_spec("logn+snapkv").check(lm.info)


# ----------------------------------------------------------------------- partial rotary, sliding only
def test_partial_rotary_refuses_what_rotates_whole_heads_and_runs_the_rest():
    lm = wrap(tiny_phi3(partial=0.5), "phi-partial")
    for name in sorted(ROPE | REROTATE) + ["kvquant"]:
        with pytest.raises(SpecError) as exc:
            Plan.from_spec(spec_for(name)).check(lm.info)
        assert "4 of" in str(exc.value) and "\n" not in str(exc.value)
    for spec in ("logn", "snapkv", "kvquant:pre_rope=false", "infiniretri:chunk=64,top_k=16"):
        run_spec(lm, spec)


def test_sliding_window_on_every_layer_refuses_position_methods():
    lm = wrap(tiny_mistral(sliding=64), "mistral-v01")
    for name in sorted(ROPE | REROTATE | {"logn"}):
        with pytest.raises(SpecError, match="sliding"):
            Plan.from_spec(spec_for(name)).check(lm.info)
    run_spec(lm, "none")
