"""Shared fixtures: tiny random-weight Llama and Gemma 3 models built in the test (no downloads) and
more architectures (Qwen2, Qwen3, Mistral, Phi-3, Llama 3.1-style, GPT-2: EXTRA_BUILDERS), a
byte-level tokenizer for them, and the real packaged models for the integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# computed-once artefacts (rag indexes, infiniretri calibrations, the dynaicl controller) go to a fresh folder,
# never the user's ~/.cache/longreach: a test sees what a fresh machine (CI) sees
os.environ["LONGREACH_CACHE"] = tempfile.mkdtemp(prefix="longreach-test-cache-")
# `--prompt auto` in the tests: the bare chat / plain formats (tests/data/prompt_formats_tests.json), whatever the
# shipped measured table says (tests/test_prompt.py checks that one against benchmarks/results/prompt-formats.json)
os.environ["LONGREACH_PROMPT_FORMATS"] = os.path.join(os.path.dirname(__file__), "data", "prompt_formats_tests.json")

TINY_VOCAB = 260  # 256 byte symbols + specials


def byte_tokenizer():
    """A byte-level tokenizer (one token per UTF-8 byte) with <s>, </s>, <pad>: ids < 260."""
    from longreach.bench.backends import byte_tokenizer as make

    return make()


def tiny_llama(window: int = 256, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=window,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma3(window: int = 512, sliding: int = 16, seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=window,
        sliding_window=sliding, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
        query_pre_attn_scalar=16, bos_token_id=256, eos_token_id=257, pad_token_id=258,
    )
    return Gemma3ForCausalLM(cfg).eval()


_TINY = dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, bos_token_id=256, eos_token_id=257, pad_token_id=258)


def tiny_qwen2(window: int = 256, seed: int = 0, rope: dict | None = None):
    """Qwen2 (biased q/k/v projections); ``rope`` replaces the default rope parameters (Qwen2.5 + YaRN)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(**_TINY, max_position_embeddings=window,
                      rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0})
    return Qwen2ForCausalLM(cfg).eval()


def tiny_qwen25_yarn(window: int = 64, seed: int = 0):
    """Qwen2.5 as its model card extends it: YaRN factor 4 over its trained window (64 here), in the
    config, so it reads 4 x 64 = 256 tokens (ModelInfo.window)."""
    return tiny_qwen2(window, seed, rope={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                          "original_max_position_embeddings": window})


def tiny_qwen3(window: int = 256, seed: int = 0):
    """Qwen3: RMS-normed queries and keys (q_norm / k_norm) before RoPE, explicit head_dim."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(**_TINY, head_dim=8, max_position_embeddings=window,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return Qwen3ForCausalLM(cfg).eval()


def tiny_mistral(window: int = 256, seed: int = 0, sliding: int | None = None):
    """Mistral v0.2+ (no sliding window by default; ``sliding`` gives v0.1's window on every layer)."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(**_TINY, max_position_embeddings=window, sliding_window=sliding,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return MistralForCausalLM(cfg).eval()


def tiny_phi3(window: int = 256, seed: int = 0, partial: float = 1.0):
    """Phi-3: one fused qkv_proj (and gate_up_proj); ``partial`` < 1 rotates only part of each head."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    cfg = Phi3Config(**_TINY, max_position_embeddings=window, original_max_position_embeddings=window,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                      "partial_rotary_factor": partial})
    return Phi3ForCausalLM(cfg).eval()


def tiny_llama3(window: int = 256, seed: int = 0):
    """Llama 3.1-style: rope_type llama3 in the config, factor 8 over an original window of window / 16
    (Llama 3.1: 8k -> 128k); head_dim 16 so that one pair falls in the smoothed band between
    wavelengths original / 4 and original / 1."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**_TINY, head_dim=16, max_position_embeddings=window, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": window // 16,
                                       "rope_theta": 500000.0})
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(window: int = 256, seed: int = 0):
    """GPT-2: learned absolute position embeddings (no RoPE), fused c_attn projection."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=TINY_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=window,
                     bos_token_id=256, eos_token_id=257, pad_token_id=258)
    return GPT2LMHeadModel(cfg).eval()


def wrap(model, name: str):
    from longreach.models import LoadedModel, model_info

    model.requires_grad_(False)
    tok = byte_tokenizer()
    return LoadedModel(model, tok, model_info(model, name, tok))


TINY_BUILDERS = {"tiny-llama": tiny_llama, "tiny-gemma3": tiny_gemma3}
#: further architectures, run by tests/test_archs.py only (the `tiny` matrix above stays two models)
EXTRA_BUILDERS = {
    "tiny-qwen2": tiny_qwen2,
    "tiny-qwen25-yarn": tiny_qwen25_yarn,
    "tiny-qwen3": tiny_qwen3,
    "tiny-mistral": tiny_mistral,
    "tiny-phi3": tiny_phi3,
    "tiny-llama3": tiny_llama3,
    "tiny-gpt2": tiny_gpt2,
}


@pytest.fixture(params=sorted(TINY_BUILDERS))
def tiny(request):
    """Each tiny architecture in turn, wrapped as a LoadedModel (fresh per test: methods may patch it)."""
    return wrap(TINY_BUILDERS[request.param](), request.param)


@pytest.fixture
def llama():
    return wrap(tiny_llama(), "tiny-llama")


@pytest.fixture
def gemma():
    return wrap(tiny_gemma3(), "tiny-gemma3")


# ------------------------------------------------------------------ real packaged models (integration)
_REAL: dict = {}


def real_model(name: str):
    from longreach.models import load_model

    if name not in _REAL:
        _REAL[name] = load_model(name, dtype="float32")
    return _REAL[name]


@pytest.fixture(scope="session")
def smollm2():
    return real_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_real():
    return real_model("gemma3-270m")


# ------------------------------------------------------------------ fuzz helpers
@contextlib.contextmanager
def time_box(seconds: float, error: type[BaseException] = TimeoutError):
    """Fail instead of hanging: raise ``error`` in the test after ``seconds`` (SIGALRM; POSIX main thread,
    elsewhere no box)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(*_):
        raise error(f"no outcome within {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------ a served app (serve tests)
@contextlib.contextmanager
def serve_in_thread(app, **settings):
    """Serve the ASGI ``app`` with uvicorn on 127.0.0.1 and a free port in a daemon thread; yield its root
    URL (``http://127.0.0.1:PORT``); stop it at the end. ``settings``: more ``uvicorn.Config`` fields."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn exited before it started listening"
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not stop within 30 s"

# ------------------------------------------------------------------ tiny sentence encoder (rag reader)
TINY_BERT_WORDS = ["the", "pass", "key", "is", "sky", "blue", "cat", "mat", "sentence", "says", "filler"]


def tiny_bert_folder(folder):
    """A tiny random BERT encoder (hidden 32, 2 layers) with a WordPiece tokenizer, saved to ``folder``:
    an embedding model for the rag reader that needs no download."""
    from pathlib import Path

    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *".,!?'\"-:;()", *[f"##{c}" for c in chars],
             *TINY_BERT_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return tiny_bert_folder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def rag_env(tiny_bert, tmp_path, monkeypatch):
    """The rag reader's defaults for a test: the tiny encoder, an index cache in the test's folder."""
    monkeypatch.setenv("LONGREACH_EMBED_MODEL", str(tiny_bert))
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    return tiny_bert
