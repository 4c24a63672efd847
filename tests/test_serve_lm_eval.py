"""lm-evaluation-harness scores a log-likelihood multiple-choice task through ``local-completions`` against
the server (a tiny random Llama served by uvicorn in a thread on a free port), offline: the task is a local
YAML + JSONL (tests/data/lm_eval/), the tokenizer a local copy of the byte tokenizer or the server's own
(``/tokenize``), requests are token ids.

What it checks: every per-choice log-likelihood lm-eval logged (``resps`` / ``filtered_resps``) equals
what longreach computes directly for the same context + continuation ids (``Engine.loglik``: the sum of
-NLL over the continuation) to 1e-4, ``is_greedy`` matches the model's argmax over the continuation, and
lm-eval's ``acc`` is the argmax of those log-likelihoods: the real check that echo + logprobs are right
(a BOS added, a token shifted or a logprob off by one position shows up here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import byte_tokenizer, serve_in_thread, tiny_llama, wrap

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval)")

DATA = Path(__file__).parent / "data" / "lm_eval"
TASK = "longreach_tiny_mc"


def served(app):
    """Serve ``app`` on 127.0.0.1:<free port> in a thread (conftest.serve_in_thread); yield its root URL."""
    return serve_in_thread(app)


def task_folder(tmp_path: Path) -> Path:
    """A copy of the task YAML whose data file is an absolute path (and whose dataset cache is tmp_path)."""
    cfg = yaml.safe_load((DATA / f"{TASK}.yaml").read_text())
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {split: str(DATA / name) for split, name in files.items()}
    cfg["dataset_kwargs"]["cache_dir"] = str(tmp_path / "datasets")
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split (TemplateLM._encode_pair): trailing spaces move to the continuation, the whole text
    is encoded once and the continuation is what follows the context's ids."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx):]


@pytest.mark.parametrize("backend", ["huggingface", "remote"])
def test_lm_eval_local_completions_loglik_matches_engine(tmp_path, backend):
    """``backend``: lm-eval tokenizes with a local copy of the byte tokenizer (``huggingface``) or through the
    server's ``/tokenizer_info`` + ``/tokenize`` (``remote``, what ``tokenizer_backend=auto`` picks); either
    way it sends token ids."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    from longreach.engine import Engine
    from longreach.serve.app import create_app
    from longreach.serve.config import ServeConfig

    lm = wrap(tiny_llama(), "tiny-llama")
    tokenizer = {"tokenizer_backend": backend}
    if backend == "huggingface":
        tok_dir = tmp_path / "tokenizer"
        byte_tokenizer().save_pretrained(tok_dir)  # read back by AutoTokenizer.from_pretrained, offline
        tokenizer["tokenizer"] = str(tok_dir)
    app = create_app(lm, ServeConfig(port=0, max_queue=8, kv_reuse_bytes=0))
    manager = TaskManager(include_path=str(task_folder(tmp_path)), include_defaults=False)

    with served(app) as root:
        out = simple_evaluate(
            model="local-completions",
            model_args={"model": "tiny-llama", "base_url": f"{root}/v1/completions", **tokenizer,
                        "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1, "timeout": 60},
            tasks=[TASK], task_manager=manager, log_samples=True, bootstrap_iters=0,
        )

    samples = out["samples"][TASK]
    docs = [json.loads(line) for line in (DATA / "tiny_mc.jsonl").read_text().splitlines() if line.strip()]
    assert len(samples) == len(docs) == 6

    engine = Engine.for_model(lm)
    tok = lm.tokenizer
    accs = []
    for s in samples:
        doc = s["doc"]
        assert len(s["arguments"]) == len(doc["choices"]) >= 2
        ours = []
        for (context, continuation), resp, filtered in zip(s["arguments"], s["resps"], s["filtered_resps"],
                                                             strict=True):
            ctx, cont = encode_pair(tok, context, continuation)
            assert ctx and cont
            ids = ctx + cont
            nll = engine.loglik("none", ids)  # (n-1,): entry i = NLL of ids[i + 1]
            loglik = -float(nll[len(ctx) - 1:].sum())
            with torch.inference_mode():
                logits = lm.model(input_ids=torch.tensor([ids])).logits[0]  # (n, V)
            greedy = bool((logits[len(ctx) - 1:-1].argmax(-1) == torch.tensor(cont)).all())
            got_ll, got_greedy = resp[0]
            assert tuple(filtered) == (got_ll, got_greedy)
            assert got_ll == pytest.approx(loglik, abs=1e-4), (context, continuation)
            assert bool(got_greedy) == greedy, (context, continuation)
            ours.append(loglik)
        pick = max(range(len(ours)), key=ours.__getitem__)
        acc = float(pick == doc["label"])
        assert s["acc"] == acc, (doc, ours)
        accs.append(acc)
    assert out["results"][TASK]["acc,none"] == pytest.approx(sum(accs) / len(accs))
