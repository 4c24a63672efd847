"""The all-methods matrix: every registered method, alone and composed, runs prefill + decode on the tiny
Llama and Gemma 3 models through the public API, and leaves the model as it found it.

New methods are picked up automatically from the registry; TINY_PARAMS only scales parameters whose
defaults are meant for real windows (the tiny Llama reads 256 tokens, the tiny Gemma 3 512).
"""

from __future__ import annotations

import pytest
import torch

import longreach
from longreach.errors import SpecError
from longreach.spec import REGISTRY, Plan, method_names

TINY_PARAMS = {
    "critical-ntk": "target=1k",
    "dprope": "target=1k",
    "self-extend": "window=32,group=4",
    "streaming": "sinks=4,window=64",
    "infiniretri": "chunk=64,top_k=16",
    "agents": "finding_tokens=16",
    "kvquant": "datatype=nuq,group=16,residual=32",  # pre-RoPE (default) + nuq, with flushes at tiny lengths
    "longheads": "chunk=16,chunks=4",
    "rag": "chunk=32,overlap=8,top_k=4",  # dense part: the tiny random BERT of conftest (rag_env)
    "route": "chunk=32,overlap=8,top_k=4",  # no calibration for tiny models: half the window, then rag
    "alr2": "chunk=32,overlap=8,top_k=4,quote_tokens=16",  # rag source with the tiny BERT; short quote step
}

DOCUMENT = " ".join(f"Sentence {i} says the sky is blue." for i in range(40))  # ~1.3k byte tokens


@pytest.fixture(autouse=True)
def _tiny_encoder(rag_env):
    """Readers that embed (rag) use the tiny random encoder; their indexes go to the test's folder."""


def spec_for(name: str) -> str:
    return f"{name}:{TINY_PARAMS[name]}" if name in TINY_PARAMS else name


def probe_logits(model):
    with torch.inference_mode():
        return model(torch.tensor([[5, 17, 99, 3, 42, 7]])).logits


def run_spec(lm, spec: str):
    plan = Plan.from_spec(spec)
    reach = plan.reach(lm.info)
    window = lm.info.window
    # methods that extend the window get more than the window; others get what fits in it
    n_chars = 2 * window if plan.extends and (reach is None or reach >= 2 * window + 64) else window // 2
    text = DOCUMENT[:n_chars]
    before = probe_logits(lm.model)
    answer = longreach.ask(text=text, question="What colour?", model=lm, method=spec, max_new_tokens=4,
                           chunk_size=48)
    assert answer.input_tokens > len(text)  # nothing was truncated
    assert answer.output_tokens >= 1 or answer.answer == ""
    assert answer.method == plan.spec
    assert answer.kv_cache_bytes > 0
    torch.testing.assert_close(probe_logits(lm.model), before)  # undone after the request
    return answer


@pytest.mark.parametrize("name", method_names())
def test_every_method_alone(tiny, name):
    try:
        Plan.from_spec(spec_for(name)).check(tiny.info)
    except SpecError as exc:  # a method may refuse a model, in one line
        assert "\n" not in str(exc)
        pytest.skip(f"{name} does not apply to {tiny.name}: {exc}")
    run_spec(tiny, spec_for(name))


def _by_slot(slot):
    return [n for n in method_names() if REGISTRY[n].slot == slot]


@pytest.mark.parametrize("rope", _by_slot("rope"))
@pytest.mark.parametrize("other", _by_slot("cache") + _by_slot("attention"))
def test_rope_composes(llama, rope, other):
    spec = f"{spec_for(rope)}+{spec_for(other)}"
    try:
        plan = Plan.from_spec(spec)
        plan.check(llama.info)
    except SpecError as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"refused in one line: {exc}")
    run_spec(llama, spec)


@pytest.mark.parametrize("cache", _by_slot("cache"))
@pytest.mark.parametrize("other", _by_slot("attention") + _by_slot("reader"))
def test_cache_composes_with_attention_and_readers(gemma, cache, other):
    spec = f"{spec_for(other)}+{spec_for(cache)}"
    try:
        Plan.from_spec(spec).check(gemma.info)
    except SpecError as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"refused in one line: {exc}")
    run_spec(gemma, spec)


def test_streaming_refuses_a_second_cache():
    if "streaming" not in REGISTRY or "kv-int8" not in REGISTRY:
        pytest.skip("needs streaming and kv-int8")
    with pytest.raises(SpecError, match="keeps its own KV cache"):
        Plan.from_spec("streaming+kv-int8")
