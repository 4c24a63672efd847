"""Shared fixtures: tiny random-weight Llama and Gemma 3 models built in the test (no downloads), a
byte-level tokenizer for them, and the real packaged models for the integration tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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


def wrap(model, name: str):
    from longreach.models import LoadedModel, model_info

    model.requires_grad_(False)
    tok = byte_tokenizer()
    return LoadedModel(model, tok, model_info(model, name, tok))


TINY_BUILDERS = {"tiny-llama": tiny_llama, "tiny-gemma3": tiny_gemma3}


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
