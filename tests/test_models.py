"""Model resolution, dtype choice and ModelInfo (no real model needed)."""

from __future__ import annotations

import pytest

from longreach import models
from longreach.errors import ModelError
from longreach.models import KNOWN_MODELS, choose_dtype, resolve_model


def test_known_models_have_their_windows():
    assert KNOWN_MODELS["smollm2-135m"].window == 8192
    assert KNOWN_MODELS["gemma3-270m"].window == 32768


@pytest.mark.parametrize("spec", ["gpt-17", "/no/such/path.gguf", "./nowhere"])
def test_unknown_model(spec):
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_file_that_is_not_gguf(tmp_path):
    p = tmp_path / "weights.bin"
    p.write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf file"):
        resolve_model(str(p))


def test_local_gguf_and_folder(tmp_path):
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    assert resolve_model(str(g)) == ("m", tmp_path, "m.gguf")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "hf")) == ("hf", tmp_path / "hf", None)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="make setup"):
        models._locate_smollm2()


@pytest.mark.parametrize("bf16,expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_follows_the_cpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(models, "native_bf16", lambda: bf16)
    dtype, reason = choose_dtype("auto")
    assert dtype == expected and reason.startswith("auto")
    assert choose_dtype("float32") == ("float32", "requested")
    with pytest.raises(ModelError, match="unknown dtype"):
        choose_dtype("int3")


def test_model_info_of_tiny_models(llama, gemma):
    assert llama.info.window == 256 and llama.info.kv_heads == 2 and llama.info.head_dim == 8
    assert set(llama.info.rope) == {"full_attention"}
    assert gemma.info.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    assert gemma.info.rope["full_attention"]["rope_theta"] == 1e6
    assert gemma.info.rope["sliding_attention"]["rope_theta"] == 1e4
    assert gemma.info.sliding_window == 16
    assert llama.info.kv_bytes_per_token == 2 * 2 * 2 * 8 * 4


def test_load_from_local_hf_folder(tmp_path, llama):
    """A local Hugging Face folder loads offline and gives the same logits."""
    import torch

    llama.model.save_pretrained(tmp_path / "m")
    llama.tokenizer.save_pretrained(tmp_path / "m")
    lm = models.load_model(str(tmp_path / "m"), dtype="float32")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(ids).logits, llama.model(ids).logits)
    assert lm.info.name == "m" and lm.info.window == 256


def test_bf16_cast_keeps_rope_frequencies_float32(tiny):
    import torch

    before = {n: b.clone() for n, b in tiny.model.named_buffers() if "inv_freq" in n}
    models.cast_keeping_rope_float32(tiny.model, torch.bfloat16)
    after = {n: b for n, b in tiny.model.named_buffers() if "inv_freq" in n}
    assert before and set(after) == set(before)
    for name, buf in after.items():
        assert buf.dtype == torch.float32 and torch.equal(buf, before[name])
    assert next(tiny.model.parameters()).dtype == torch.bfloat16
