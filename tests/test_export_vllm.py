"""``longreach export vllm``: the printed ``--hf-overrides`` must give, in transformers' own rope code, exactly
the frequencies and attention factor longreach installs.

The reference is independent of longreach's formulas: the printed JSON is applied to the model's config the
way vLLM applies it (``config.update(overrides)``), then transformers builds the rotary module from that config
(its ``ROPE_INIT_FUNCTIONS`` / default init) and its ``inv_freq`` + ``attention_scaling`` are compared with what
the longreach method computes for every layer type (Gemma 3's sliding layers must stay as loaded). The model
is a folder holding only ``config.json``: the export never needs weights.
"""

from __future__ import annotations

import copy
import json
import shlex

import pytest
import torch
from conftest import tiny_gemma3, tiny_gpt2, tiny_llama, wrap
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longreach.cli import main
from longreach.serve.vllm import export_vllm
from longreach.spec import Plan

BUILDERS = {"tiny-llama": tiny_llama, "tiny-gemma3": tiny_gemma3}
SPECS = ["pi:factor=4", "ntk:factor=4", "critical-ntk:factor=4", "yarn:factor=4", "yarn:target=3000,beta_fast=16",
         "yarn:factor=2,original=128", "dynamic-ntk:factor=4", "dprope:factor=1"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny model as a folder with its config.json only (no weights, no tokenizer)."""
    out = {}
    for name, build in BUILDERS.items():
        folder = tmp_path_factory.mktemp(name)
        build().config.save_pretrained(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
        out[name] = (str(folder), wrap(build(), name))
    return out


def run_cli(capsys, *args):
    rc = main(["export", "vllm", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def printed(out: str) -> tuple[list[str], dict | None, int]:
    """(argv, --hf-overrides JSON or None, --max-model-len) of the one printed command line."""
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    argv = shlex.split(lines[0])
    while "=" in argv[0]:  # VAR=value prefixes
        argv.pop(0)
    assert argv[:2] == ["vllm", "serve"]
    opts = dict(zip(argv[3::2], argv[4::2]))
    assert set(opts) <= {"--hf-overrides", "--max-model-len"}, argv
    overrides = json.loads(opts["--hf-overrides"]) if "--hf-overrides" in opts else None
    return argv, overrides, int(opts["--max-model-len"])


def rotary_from(lm, config):
    """The model's rotary class (transformers) built from ``config``: {layer type: (inv_freq float64, factor)}."""
    from longreach.rotary import ALL_TYPES, find_rotary, rotary_slots

    module = type(find_rotary(lm.model))(config=config)
    slots = rotary_slots(module)
    out = {}
    for t, (buf, scale) in slots.items():
        key = "full_attention" if t == ALL_TYPES else t
        out[key] = (getattr(module, buf).double(), float(getattr(module, scale)))
    return out


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_printed_overrides_match_longreach_frequencies(folders, capsys, name, spec):
    folder, lm = folders[name]
    rc, out, err = run_cli(capsys, "--model", folder, "--method", spec)
    assert rc == 0, err
    argv, overrides, max_len = printed(out)
    assert argv[2] == folder
    plan = Plan.from_spec(spec)
    method, info = plan.get("rope"), lm.info
    assert max_len == plan.reach(info)
    assert overrides is not None and set(overrides) <= {"rope_parameters", "max_position_embeddings"}

    config = copy.deepcopy(lm.model.config)
    config.update(overrides)  # what vLLM does with --hf-overrides
    built = rotary_from(lm, config)
    original = rotary_from(lm, lm.model.config)
    tokens = plan.reach(info)
    for t in sorted(set(info.layer_types)):
        inv, factor = built[t]
        if t == "sliding_attention":  # sliding layers are never changed
            assert torch.equal(inv, original[t][0]) and factor == original[t][1]
            continue
        want_inv, want_factor = method.frequencies(info, t, tokens)
        if method.dynamic:  # transformers' dynamic init sizes itself for the native window: the model as is
            want_inv, want_factor = method.frequencies(info, t, info.window)
        torch.testing.assert_close(inv, want_inv, rtol=2e-6, atol=0)
        assert factor == pytest.approx(want_factor, rel=1e-12)
    if overrides.get("max_position_embeddings"):  # base changes raise vLLM's length limit to the reach
        assert overrides["max_position_embeddings"] == max_len
        assert all(p["rope_type"] == "default" for p in
                   (overrides["rope_parameters"].values() if name == "tiny-gemma3" else [overrides["rope_parameters"]]))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_dynamic_ntk_matches_transformers_at_every_length(folders, capsys, name):
    """transformers' ``dynamic`` init at sequence length l gives longreach's base for a request of l tokens."""
    folder, lm = folders[name]
    rc, out, _ = run_cli(capsys, "--model", folder, "--method", "dynamic-ntk:factor=4")
    assert rc == 0
    _, overrides, _ = printed(out)
    config = copy.deepcopy(lm.model.config)
    config.update(overrides)
    method = Plan.from_spec("dynamic-ntk:factor=4").get("rope")
    layer = "full_attention" if name == "tiny-gemma3" else None
    window = lm.info.window
    for tokens in (window // 2, window + 1, 2 * window, 4 * window):
        inv, factor = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=tokens, layer_type=layer)
        want, want_factor = method.frequencies(lm.info, "full_attention", tokens)
        torch.testing.assert_close(inv.double(), want, rtol=2e-6, atol=0)
        assert factor == want_factor == 1.0


def test_dynamic_ntk_warns_that_vllm_differs(folders, capsys):
    rc, out, err = run_cli(capsys, "--model", folders["tiny-llama"][0], "--method", "dynamic-ntk")
    assert rc == 0 and "issues/3488" in err and err.startswith("# ")
    assert "issues/3488" not in out


def test_gemma3_override_keeps_every_layer_type(folders, capsys):
    rc, out, _ = run_cli(capsys, "--model", folders["tiny-gemma3"][0], "--method", "yarn:factor=4")
    _, overrides, max_len = printed(out)
    params = overrides["rope_parameters"]
    assert set(params) == {"sliding_attention", "full_attention"}  # vLLM replaces the whole dict
    assert params["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    full = params["full_attention"]
    assert full["rope_type"] == "yarn" and full["factor"] == 4.0 and full["rope_theta"] == 1e6
    assert full["original_max_position_embeddings"] == 512 and max_len == 2048
    assert (full["beta_fast"], full["beta_slow"]) == (32.0, 1.0)


def test_plain_plan_has_no_override(folders, capsys):
    rc, out, _ = run_cli(capsys, "--model", folders["tiny-llama"][0])
    argv, overrides, max_len = printed(out)
    assert rc == 0 and overrides is None and max_len == 256 and "--hf-overrides" not in argv


def test_max_model_len_beyond_the_reach_needs_vllms_switch(folders, capsys):
    folder = folders["tiny-llama"][0]
    rc, out, err = run_cli(capsys, "--model", folder, "--method", "yarn:factor=2", "--max-model-len", "4096")
    assert rc == 0 and out.startswith("VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 vllm serve ")
    assert printed(out)[2] == 4096 and "beyond what yarn:factor=2.0 reads (512 tokens)" in err
    rc, out, _ = run_cli(capsys, "--model", folder, "--method", "yarn:factor=2", "--max-model-len", "300")
    assert rc == 0 and out.startswith("vllm serve ") and printed(out)[2] == 300
    rc, _, err = run_cli(capsys, "--model", folder, "--max-model-len", "0")
    assert rc == 2 and "--max-model-len" in err


@pytest.mark.parametrize("spec,why", [
    ("self-extend", "self-extend changes attention; vLLM has no configuration for it"),
    ("streaming", "streaming changes attention"),
    ("kv-int4", "kv-int4 changes the KV cache"),
    ("yarn:factor=2+snapkv", "snapkv changes the KV cache"),
    ("infiniretri", "infiniretri is a reader"),
    ("dynamic-yarn", "dynamic-yarn cannot be exported to vLLM: its YaRN scale follows each request's length"),
    ("dprope:factor=8", "dprope cannot be exported to vLLM: it interpolates some rotary pairs"),
])
def test_refusals_are_one_line_naming_the_method(folders, capsys, spec, why):
    rc, out, err = run_cli(capsys, "--model", folders["tiny-gemma3"][0], "--method", spec)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and why in err and "longreach serve" in err, err


def test_dprope_mixed_choice_is_really_mixed(folders):
    """The refusal above is earned: dprope:factor=8 interpolates some pairs of tiny-gemma3 and not others."""
    from longreach.methods.rope.dprope import dprope_inv_freq

    info = folders["tiny-gemma3"][1].info
    _, interpolate = dprope_inv_freq(1e6, info.head_dim, info.window, 8 * info.window)
    assert bool(interpolate.any()) and not bool(interpolate.all())


def test_a_model_without_rope_is_refused_by_the_method(tmp_path, capsys):
    tiny_gpt2().config.save_pretrained(tmp_path)
    rc, out, err = run_cli(capsys, "--model", str(tmp_path), "--method", "yarn:factor=2")
    assert rc == 2 and out == "" and "needs rotary position embeddings" in err
    rc, out, _ = run_cli(capsys, "--model", str(tmp_path))  # the plain model exports as is
    assert rc == 0 and printed(out)[1] is None


def test_bad_spec_and_model_fail_before_reading(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "missing"), "--method", "yarn:factor=0.5")
    assert rc == 2 and "factor" in err  # the spec is checked first
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "missing"), "--method", "self-extend")
    assert rc == 2 and "self-extend changes attention" in err  # refused without any model
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "missing"), "--method", "pi")
    assert rc == 2 and "unknown model" in err


def test_json_output(folders, capsys):
    rc, out, _ = run_cli(capsys, "--model", folders["tiny-llama"][0], "--method", "pi:factor=2", "--json")
    data = json.loads(out)
    assert rc == 0 and data["spec"] == "pi:factor=2.0" and data["max_model_len"] == data["reach"] == 512
    assert data["hf_overrides"] == {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}
    assert data["argv"][:3] == ["vllm", "serve", folders["tiny-llama"][0]]


@pytest.mark.integration
def test_packaged_model_exports_its_hub_original():
    export = export_vllm("smollm2-135m", "yarn:factor=2")
    assert export.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and export.max_model_len == 16384
    assert export.hf_overrides["rope_parameters"]["rope_theta"] == 100000.0
    assert any("unquantized original" in w for w in export.warnings)
