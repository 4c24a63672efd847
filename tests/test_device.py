"""Devices and dtypes without a GPU: device resolution (torch.cuda faked), one-line errors, the GPU memory
budget, placement keeping rotary frequencies float32, the attention kernel's CPU-only fused path, and the
GPU smoke script's clean skip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import tiny_gemma3, tiny_llama

from longreach import memory, models
from longreach.cli import main
from longreach.errors import MemoryBudgetError, ModelError
from longreach.memory import Estimate, PeakMemory, available_bytes, check_fits
from longreach.methods.attention import kernel
from longreach.models import choose_dtype, place, resolve_device

GiB = 1 << 30


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch believes in two CUDA devices (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# --------------------------------------------------------------------------------- device resolution
def test_auto_is_cpu_without_cuda(no_cuda):
    device, reason = resolve_device("auto")
    assert device == torch.device("cpu") and reason.startswith("auto")
    assert resolve_device(None)[0] == torch.device("cpu")
    assert resolve_device("cpu") == (torch.device("cpu"), "requested")


def test_auto_is_cuda_when_present(fake_cuda):
    assert resolve_device("auto") == (torch.device("cuda", 0), "auto: CUDA is available")
    assert resolve_device("cuda")[0] == torch.device("cuda", 0)
    assert resolve_device("CUDA:1")[0] == torch.device("cuda", 1)
    with pytest.raises(ModelError, match=r"only 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_auto_never_picks_mps(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto")[0] == torch.device("cpu")
    assert resolve_device("mps")[0] == torch.device("mps")


@pytest.mark.parametrize("spec,fragment", [("cuda", "--device cpu"), ("cuda:0", "--device cpu"),
                                           ("mps", "--device cpu"), ("tpu", "unknown device"),
                                           ("cpu:1", "unknown device"), ("cuda:x", "unknown device")])
def test_missing_or_unknown_device_is_one_line(no_cuda, monkeypatch, spec, fragment):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelError, match=fragment) as exc:
        resolve_device(spec)
    assert "\n" not in str(exc.value)


def test_auto_dtype_per_device(monkeypatch, fake_cuda):
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # Hopper
    assert choose_dtype("auto", torch.device("cuda", 0))[0] == "bfloat16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # Turing: no bf16
    assert choose_dtype(None, "cuda:1") == ("float16", "auto: this GPU has no bfloat16 (float16 instead)")
    assert choose_dtype("float32", "cuda") == ("float32", "requested")  # asked for: kept
    assert choose_dtype("auto", torch.device("mps"))[0] == "float16"
    monkeypatch.setattr(models, "native_bf16", lambda: False)
    assert choose_dtype("auto", torch.device("cpu"))[0] == "float32"  # the CPU rule is unchanged


# ------------------------------------------------------------------------------------ placement
@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3])
def test_place_keeps_rope_float32_and_moves_everything(build):
    model = build()
    before = {n: b.clone() for n, b in model.named_buffers() if "inv_freq" in n}
    assert before and any("original_inv_freq" in n for n in before)
    place(model, torch.device("meta"), torch.bfloat16)  # a non-CPU device that exists everywhere
    after = dict(model.named_buffers())  # a KeyError here: the buffer became a plain attribute
    for name in before:
        assert after[name].dtype == torch.float32 and after[name].device.type == "meta"
    assert all(p.dtype == torch.bfloat16 and p.device.type == "meta" for p in model.parameters())
    # the same helper on the CPU: values exactly kept (a bf16 round trip would change them)
    model = build()
    place(model, torch.device("cpu"), torch.bfloat16)
    for name, original in before.items():
        assert torch.equal(dict(model.named_buffers())[name], original)
    assert not torch.equal(original, original.to(torch.bfloat16).float())  # so the check above can fail


def test_load_model_in_bfloat16_keeps_rope_float32(tmp_path, llama, no_cuda):
    llama.model.save_pretrained(tmp_path / "m")
    llama.tokenizer.save_pretrained(tmp_path / "m")
    lm = models.load_model(str(tmp_path / "m"), dtype="bfloat16", device="auto")
    assert lm.device == torch.device("cpu") and lm.info.dtype == "bfloat16"
    assert lm.device_reason.startswith("auto") and lm.dtype_reason == "requested"
    freqs = {n: b for n, b in lm.model.named_buffers() if "inv_freq" in n}
    assert freqs and all(b.dtype == torch.float32 for b in freqs.values())
    torch.testing.assert_close(freqs["model.rotary_emb.inv_freq"], llama.model.model.rotary_emb.inv_freq,
                               rtol=0, atol=0)


def test_load_model_places_on_cuda_when_auto_finds_it(tmp_path, llama, fake_cuda, monkeypatch):
    """Wiring only (no GPU here): auto + CUDA -> place(model, cuda:0, bfloat16), and LoadedModel.device."""
    llama.model.save_pretrained(tmp_path / "m")
    llama.tokenizer.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    calls = []
    monkeypatch.setattr(models, "place", lambda model, device, dtype: calls.append((device, dtype)))
    lm = models.load_model(str(tmp_path / "m"))
    assert calls == [(torch.device("cuda", 0), torch.bfloat16)]
    assert lm.device == torch.device("cuda", 0) and lm.dtype_reason == "auto: this GPU computes bfloat16"


def test_device_is_checked_before_the_model_is_resolved(no_cuda):
    with pytest.raises(ModelError, match="--device cpu"):
        models.load_model("no-such-model", device="cuda")  # the device error, not "unknown model"


def test_loaded_model_device_defaults_to_the_weights(llama):
    assert llama.device == torch.device("cpu")
    assert models.LoadedModel(object(), None, llama.info).device == torch.device("cpu")  # a stand-in


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def doc(tmp_path):
    p = tmp_path / "doc.txt"
    p.write_text("The pass key is 12345. " * 10)
    return p


@pytest.mark.parametrize("argv", [["ask", "{doc}", "-q", "What?", "--device", "cuda"],
                                  ["info", "--device", "cuda"],
                                  ["bench", "--device", "cuda", "--out", "{out}"],
                                  ["ask", "{doc}", "-q", "What?", "--device", "tpu"]])
def test_cli_device_error_is_one_line_exit_2(no_cuda, doc, tmp_path, capsys, monkeypatch, argv):
    loads = []
    monkeypatch.setattr(models, "resolve_model", lambda spec: loads.append(spec))  # must not be reached
    argv = [a.format(doc=doc, out=tmp_path / "bench") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("longreach: error: ") and err.strip().count("\n") == 0
    assert ("--device cpu" in err) or ("unknown device" in err)
    assert loads == [] and not (tmp_path / "bench").exists()


def test_info_prints_the_device(llama, capsys, monkeypatch):
    seen = {}

    def fake_load(spec, dtype=None, device="auto"):
        seen.update(spec=spec, dtype=dtype, device=device)
        return llama

    monkeypatch.setattr(models, "load_model", fake_load)
    assert main(["info", "--device", "cpu", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert seen["device"] == "cpu" and seen["dtype"] == "float16"
    assert any(line.startswith("device") and "cpu" in line for line in out.splitlines())


def test_bench_passes_the_device_to_the_local_backend(monkeypatch, tmp_path, llama):
    from longreach.bench import backends, runner

    cfg = runner.load_config(None, {"device": "cuda:1", "out": str(tmp_path)})
    assert cfg.device == "cuda:1"
    got = {}
    monkeypatch.setattr(models, "load_model", lambda spec, dtype=None, device="auto": got.update(
        device=device) or llama)  # LocalBackend imports it when it loads
    backend = runner.sweep_backend(cfg)
    assert isinstance(backend, backends.LocalBackend)
    assert got["device"] == "cuda:1" and backend.lm is llama


# ---------------------------------------------------------------------------------------- memory
def test_available_bytes_on_cuda_counts_free_plus_allocator_cache(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(device) or (5 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * GiB)
    cuda1 = torch.device("cuda", 1)
    assert available_bytes(cuda1) == 6 * GiB and asked == [cuda1]
    assert available_bytes("cuda:1") == 6 * GiB
    # the CPU path never asks the GPU
    asked.clear()
    assert available_bytes() == memory._system_available_bytes() and asked == []
    assert available_bytes(torch.device("cpu")) > 0 and asked == []


def test_check_fits_uses_the_device_budget(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    fits = Estimate(kv_cache=2 * GiB, activations=GiB)  # 3 GiB x 1.25 = 3.75 GiB
    too_big = Estimate(kv_cache=3 * GiB, activations=GiB)  # 5 GiB
    check_fits(fits, 1000, device=torch.device("cuda", 0))
    with pytest.raises(MemoryBudgetError, match="is free on cuda:0") as exc:
        check_fits(too_big, 1000, device=torch.device("cuda", 0))
    assert "\n" not in str(exc.value)
    with pytest.raises(MemoryBudgetError, match="is available"):  # an explicit limit wins over the device
        check_fits(fits, 1000, limit=GiB, device=torch.device("cuda", 0))


def test_peak_memory_on_cuda_reads_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 7 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * GiB)  # held at the start
    with PeakMemory(torch.device("cuda", 0)) as peak:
        assert calls == [("reset", torch.device("cuda", 0))]
    assert peak.peak == 7 * GiB and peak.start == 2 * GiB and peak.added == 5 * GiB
    with PeakMemory() as cpu_peak:  # the CPU path does not touch torch.cuda
        bytearray(1 << 20)
    assert cpu_peak.peak > 0 and len(calls) == 1


# ---------------------------------------------------------------------------------------- kernel
def _tile(dtype, seed=0, g=2, tq=24, tk=40, d=16):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, g, tq, d, generator=gen).to(dtype)  # (B, Hkv, g, Tq, D)
    k = torch.randn(1, 2, tk, d, generator=gen).to(dtype)  # (B, Hkv, Tk, D)
    v = torch.randn(1, 2, tk, d, generator=gen).to(dtype)
    dist = torch.arange(tq)[:, None] + 20 - torch.arange(tk)[None]  # (Tq, Tk), queries at 20..43
    mask = (dist >= 0) & (dist < 12)
    mask[3] = False  # a row that sees no key: lse -inf, output 0
    return q, k, v, mask


def _reference(q, k, v, mask, scale):
    """Independent float64 softmax attention with an explicit log-sum-exp."""
    s = torch.einsum("bhgqd,bhkd->bhgqk", q.double(), k.double()) * scale  # (B, Hkv, g, Tq, Tk)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)  # (B, Hkv, g, Tq, 1)
    p = torch.nan_to_num(torch.exp(s - lse), nan=0.0)
    return torch.einsum("bhgqk,bhkd->bhgqd", p, v.double()), lse


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_cpu_and_public_fallback_agree(dtype, tol, monkeypatch):
    q, k, v, mask = _tile(dtype)
    assert kernel.uses_cpu_flash(q, k, v) == (kernel._FLASH is not None)
    fused = kernel.partial_attention(q, k, v, mask, 0.25, fused=True)
    plain = kernel.partial_attention(q, k, v, mask, 0.25, fused=False)
    monkeypatch.setattr(kernel, "_FLASH", None)  # as on a torch without the private op
    missing = kernel.partial_attention(q, k, v, mask, 0.25, fused=True)
    ref_out, ref_lse = _reference(q, k, v, mask, 0.25)
    for out, lse in (fused, plain, missing):
        assert out.dtype == lse.dtype == torch.float32
        assert torch.isneginf(lse[..., 3, :]).all() and (out[..., 3, :] == 0).all()
        live = torch.isfinite(ref_lse)
        torch.testing.assert_close(lse[live], ref_lse[live].float(), rtol=tol, atol=tol)
        torch.testing.assert_close(out, ref_out.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(missing[0], plain[0], rtol=0, atol=0)


def test_private_cpu_kernel_is_never_used_off_the_cpu(monkeypatch):
    used = []

    def spy(*args, **kwargs):
        used.append(args[0].device.type)
        raise AssertionError("the private CPU kernel was called")

    monkeypatch.setattr(kernel, "_FLASH", spy)
    q, k, v, mask = (t.to("meta") for t in _tile(torch.bfloat16))  # a non-CPU device available here
    assert not kernel.uses_cpu_flash(q, k, v)
    out, lse = kernel.partial_attention(q, k, v, mask, 0.25)  # the public path runs
    assert out.device.type == lse.device.type == "meta" and out.shape == (1, 2, 2, 24, 16)
    assert used == []
    cpu = _tile(torch.float32)
    assert kernel.uses_cpu_flash(*cpu[:3]) and not kernel.uses_cpu_flash(*cpu[:3], softcap=30.0)
    assert not kernel.uses_cpu_flash(cpu[0], cpu[1].to("meta"), cpu[2])  # mixed devices: public path


# ------------------------------------------------------------------------------------- GPU smoke
def test_gpu_smoke_skips_cleanly_without_cuda(no_cuda, capsys):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    results = smoke.RESULTS
    before = results.stat().st_mtime_ns if results.exists() else None
    assert smoke.main([]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA device; skipped"
    assert (results.stat().st_mtime_ns if results.exists() else None) == before
    assert {"none", "dynamic-ntk", "yarn", "self-extend", "logn", "streaming", "longheads", "kv-int4", "kvquant",
            "snapkv", "kv-cluster", "infiniretri"} <= set(smoke.METHODS)
    assert any("+" in m for m in smoke.METHODS)
