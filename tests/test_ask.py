"""longreach.ask on tiny models: too-long input, memory pre-check, stats."""

from __future__ import annotations

import pytest

import longreach
from longreach.engine import Engine
from longreach.errors import MemoryBudgetError, TooLongError
from longreach.memory import available_bytes, estimate_request, kv_cache_bytes_full
from longreach.readers import Request


def test_too_long_is_refused_not_truncated(llama):
    text = "x" * 400  # byte tokenizer: 400 tokens > the tiny window of 256
    with pytest.raises(TooLongError) as exc:
        longreach.ask(text=text, question="q?", model=llama)
    msg = str(exc.value)
    assert "tokens" in msg and "reads 256 tokens" in msg and "\n" not in msg


def test_fits_just_inside_window(llama):
    a = longreach.ask(text="y" * 150, question="q?", model=llama, max_new_tokens=3, chunk_size=32)
    assert a.input_tokens <= 256 and a.window == 256 and a.reach == 256
    assert a.output_tokens <= 3 and a.method == "none" and a.model == "tiny-llama"


def test_memory_precheck_refuses_with_numbers(llama):
    with pytest.raises(MemoryBudgetError) as exc:
        longreach.ask(text="z" * 100, question="q?", model=llama, memory_limit=1000)
    msg = str(exc.value)
    assert "need about" in msg and "available" in msg and "KV cache" in msg


def test_kv_estimate_matches_real_cache(tiny):
    """The pre-check's KV formula equals the bytes a real cache holds (sliding layers capped on Gemma 3)."""
    req = Request(document="w" * 120, question="q?", max_new_tokens=1, chunk_size=50)
    result = Engine(tiny).run("none", req)
    held = result.input_tokens  # one generated token is never fed back with max_new_tokens=1
    # independent count: transformers keeps sliding_window - 1 tokens in sliding layers after prefill
    per = 2 * tiny.info.kv_heads * tiny.info.head_dim * 4  # float32 K + V
    n_sliding = tiny.info.layer_types.count("sliding_attention")
    expected = per * (held * (tiny.info.layers - n_sliding) + n_sliding * min(held, (tiny.info.sliding_window or 1) - 1))
    assert result.kv_cache_bytes == expected == kv_cache_bytes_full(tiny.info, held)


def test_estimate_grows_with_length(tiny):
    small = estimate_request(tiny.info, 1000, 256).total
    large = estimate_request(tiny.info, 4000, 256).total
    assert large > small > 0
    assert available_bytes() > 100 * 1024 * 1024


def test_peak_memory_sees_an_allocation():
    """In a fresh process (a long-lived one may reuse freed pages without raising its RSS)."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from longreach.memory import PeakMemory\n"
        "with PeakMemory() as pm:\n"
        "    block = np.ones(64 * 1024 * 1024 // 8)\n"
        "    block.sum()\n"
        "del block\n"
        "print(pm.added, pm.peak - pm.start_rss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    added, rise = map(int, out.split())
    assert added == rise > 48 * 1024 * 1024


def test_streaming_reader_reads_a_file_path(llama, tmp_path):
    """A reader that streams gets the file path (read in pieces), and the answer matches the in-memory text."""
    if "infiniretri" not in longreach.method_names():
        pytest.skip("needs the infiniretri reader")
    text = " ".join(f"Line {i} is about the weather." for i in range(60))
    p = tmp_path / "doc.txt"
    p.write_text(text)
    spec = "infiniretri:chunk=64,top_k=16"
    from_file = longreach.ask(p, "What is it about?", model=llama, method=spec, max_new_tokens=3)
    from_text = longreach.ask(text=text, question="What is it about?", model=llama, method=spec, max_new_tokens=3)
    assert from_file.answer == from_text.answer and from_file.evidence == from_text.evidence
    assert from_file.reach is None
