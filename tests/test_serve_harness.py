"""The benchmark harness through ``longreach serve`` gives what it gives in process.

The packaged SmolLM2-135M is served by ``create_app`` + uvicorn on a free port in a thread; the same
pass-key sweep (1k tokens, 2 depths x 1 sample, methods ``none`` and ``pi:factor=4``) runs once with the
local backend and once with ``openai:url=...,chat=0`` through the harness's own API (``load_config`` /
``run_bench``). The method reaches the server as ``model = "NAME@SPEC"``. Greedy decoding on the same
prompt ids must give the same prediction and score, sample by sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import serve_in_thread  # noqa: E402

from longreach.bench.runner import load_config, run_bench  # noqa: E402
from longreach.spec import Plan  # noqa: E402

pytestmark = pytest.mark.integration

METHODS = "none;pi:factor=4"


@pytest.fixture(scope="module")
def served(smollm2):
    """The server's base URL (``http://127.0.0.1:PORT/v1``); stopped after the module."""
    from longreach.serve import ServeConfig, create_app

    app = create_app(smollm2, ServeConfig(port=0, kv_reuse_bytes=0))
    with serve_in_thread(app) as root:
        yield f"{root}/v1"


def sweep(out: Path, backend: str, lm) -> dict[tuple[str, str], dict]:
    """Run the sweep; (method, sample id) -> its record."""
    cfg = load_config(None, dict(backend=backend, model="smollm2-135m", methods=METHODS, tasks="passkey",
                                 lengths="1k", depths=2, samples=1, out=str(out), prompt="plain", dtype="float32"))
    stats = run_bench(cfg, lm=lm, progress=False)
    assert stats.cells_done == 2 and stats.ran == 4
    records = {}
    for path in out.rglob("samples.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            records[(rec["method"], rec["id"])] = rec
    return records


def test_served_sweep_matches_the_local_one(smollm2, served, tmp_path):
    local = sweep(tmp_path / "local", "local", smollm2)
    remote = sweep(tmp_path / "remote", f"openai:url={served},chat=0", smollm2)
    assert sorted(local) == sorted(remote) and len(local) == 4
    for key in sorted(local):
        lo, re_ = local[key], remote[key]
        assert lo["error"] is None and re_["error"] is None, (key, re_["error"])
        assert re_["prediction"] == lo["prediction"], key
        assert re_["score"] == lo["score"], key
        assert re_["input_tokens"] == lo["input_tokens"] == lo["tokens"], key  # the server read the same ids
    # the method mattered: pi:factor=4 does not answer like the plain model (so the match above is the
    # method's answer, not the plain model's by accident)
    plain = [local[k]["prediction"] for k in sorted(local) if k[0] == "none"]
    pi = [local[k]["prediction"] for k in sorted(local) if k[0] != "none"]
    assert plain != pi


def test_the_server_answers_as_the_method_it_was_asked_for(smollm2, served):
    from longreach.bench.backends import make_backend

    backend = make_backend(f"openai:url={served},chat=0", smollm2)
    plan = Plan.from_spec("pi:factor=4")
    assert backend.served_model(plan) == "smollm2-135m@pi:factor=4.0"
    data = backend._post("/completions", {"model": backend.served_model(plan), "prompt": "Hello", "max_tokens": 1,
                                          "temperature": 0}, plan.spec)
    assert data["model"] == "smollm2-135m@pi:factor=4.0"
