"""``longreach export vllm``: the ``vllm serve`` command line that reads like a longreach position method,
or a one-line refusal saying why vLLM cannot.

vLLM builds its rotary embedding from the model's Hugging Face config, so a position method that only
changes the rope frequencies (and YaRN's attention factor) becomes a config override:
``--hf-overrides '{"rope_parameters": ...}'`` in transformers' format plus ``--max-model-len`` (the
method's reach). Each rope method states its own form (:meth:`RopeMethod.vllm_rope_parameters`):

==============  ========================================================================
pi              ``linear`` with factor s
ntk             ``default`` with the raised rope_theta (a base change only)
critical-ntk    ``default`` with the critical-dimension rope_theta
dynamic-ntk     ``dynamic`` with factor s (vLLM sizes the base for the full reach at every
                length, vLLM issue 3488: a warning is printed)
yarn            ``yarn`` with factor, original_max_position_embeddings, beta_fast,
                beta_slow and attention_factor as longreach computes them
dprope          only when every pair is interpolated (``linear``) or none is
dynamic-yarn    refused: its scale follows the request length
==============  ========================================================================

vLLM replaces a dict-valued config key whole, so ``rope_parameters`` is written complete: on a model
with several layer types (Gemma 3) one dict per type, the types the method leaves alone (sliding
layers) copied from the model's config. A model whose text settings sit in a nested ``text_config``
gets the override under that key (vLLM updates nested configs key by key). A ``default`` rope type
does not raise vLLM's length limit, so for a base change ``max_position_embeddings`` is raised to the
reach too (the default rotary type ignores it; vLLM sizes its cos/sin table by it).

Attention methods, cache methods and readers change the computation itself, which no vLLM setting
reproduces: they are refused with the reason. Nothing is loaded but the model's config (a known
model's packaged config, a folder's ``config.json``, a ``.gguf`` header).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path
from typing import Any

from ..errors import LongreachError, ModelError
from ..models import KNOWN_MODELS, ModelInfo, model_info, resolve_model
from ..spec import Plan

#: The Hugging Face repositories the packaged models were quantized from: what vLLM loads for them.
HF_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}

#: The vLLM issue on its dynamic NTK scaling (computed once for the full reach, not per length).
DYNAMIC_ISSUE = "https://github.com/vllm-project/vllm/issues/3488"

_SLOT_REASONS = {
    "attention": "changes attention",
    "cache": "changes the KV cache",
    "reader": "is a reader (it decides what the model reads, chunk by chunk)",
}


class NotExportable(LongreachError):
    """The method has no vLLM configuration (one line: which method and why; exit code 2)."""


@dataclasses.dataclass
class VLLMExport:
    """What ``longreach export vllm`` prints: ``vllm serve`` arguments plus warnings for stderr."""

    model: str  # what vLLM loads: a Hugging Face id, a model folder or a .gguf file
    spec: str  # the longreach method spec it reproduces
    hf_overrides: dict[str, Any] | None  # None: the plain model
    max_model_len: int
    reach: int  # tokens the spec reads in longreach
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # variables vLLM needs (long max_model_len)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def argv(self) -> list[str]:
        args = ["vllm", "serve", self.model]
        if self.hf_overrides is not None:
            args += ["--hf-overrides", json.dumps(self.hf_overrides, separators=(",", ":"))]
        return args + ["--max-model-len", str(self.max_model_len)]

    def command(self) -> str:
        """One shell line (quoted), environment variables first."""
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join(env + [shlex.join(self.argv())])

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "argv": self.argv(), "command": self.command()}


# ---------------------------------------------------------------------------------------- the mapping
def refuse_slots(plan: Plan) -> None:
    """A :class:`NotExportable` for the first method of ``plan`` that is not a rope method."""
    for m in plan.methods:
        if m.slot != "rope":
            raise NotExportable(f"{m.name} {_SLOT_REASONS.get(m.slot, 'changes the computation')}; vLLM has no "
                                f"configuration for it: serve it with `longreach serve --method {plan.spec}`")


def rope_overrides(plan: Plan, info: ModelInfo, config: Any) -> dict[str, Any] | None:
    """The ``--hf-overrides`` dict for ``plan`` on a model with this :class:`ModelInfo` and transformers
    ``config``; None for the plain plan. A :class:`NotExportable` for what vLLM cannot express; the
    method's own one-line :class:`SpecError` when it does not apply to the model."""
    refuse_slots(plan)
    rope = plan.get("rope")
    if rope is None:
        return None
    plan.check(info)  # the same refusal as `longreach ask` (GPT-2, a config that already scales RoPE, ...)
    changed = rope.vllm_rope_parameters(info)
    if changed is None:
        raise NotExportable(f"{rope.name} cannot be exported to vLLM: {rope.vllm_refusal}; serve it with "
                            f"`longreach serve --method {plan.spec}`")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    current = getattr(text, "rope_parameters", None) or {}
    nested = bool(current) and all(isinstance(v, dict) for v in current.values())
    if nested:  # one complete dict per layer type: vLLM sets the whole key
        params: dict[str, Any] = {t: dict(p) for t, p in current.items()}
        unknown = sorted(set(changed) - set(params))
        if unknown:
            raise NotExportable(f"{rope.name}: {info.name}'s config has no rope_parameters for {unknown}; "
                                "serve it with `longreach serve`")
        params.update(changed)
    else:
        if len(changed) != 1:
            raise NotExportable(f"{rope.name}: {info.name} has one rope_parameters dict but the method changes "
                                f"{len(changed)} layer types; serve it with `longreach serve`")
        params = dict(next(iter(changed.values())))
        for key in ("partial_rotary_factor",):  # kept from the model (rope methods need it to be 1)
            if key in current:
                params.setdefault(key, current[key])
    overrides: dict[str, Any] = {"rope_parameters": params}
    reach = plan.reach(info) or info.window
    if all(p.get("rope_type") == "default" for p in changed.values()) and reach > info.window:
        overrides["max_position_embeddings"] = reach  # vLLM's length limit and cos/sin table for a base change
    if text is not config:
        overrides = {"text_config": overrides}
    return overrides


def export_vllm(model: str, spec: str = "none", max_model_len: int | None = None) -> VLLMExport:
    """The ``vllm serve`` line for ``spec`` on ``model`` (known name, folder or .gguf; config only)."""
    plan = Plan.from_spec(spec)  # a bad spec fails before any file is read
    refuse_slots(plan)  # and what vLLM cannot do, too
    if max_model_len is not None and not 1 <= max_model_len <= 1 << 24:
        raise NotExportable(f"--max-model-len must be from 1 to 16M tokens, got {max_model_len}")
    config, info, target, warnings = read_config(model)
    overrides = rope_overrides(plan, info, config)
    reach = plan.reach(info) or info.window
    types = [p.get("rope_type") for p in _changed(overrides)]
    if "dynamic" in types:
        warnings.append(f"vLLM's dynamic rope type fixes the NTK base for the full reach ({reach:,} tokens) at "
                        f"every length, unlike longreach and transformers, which size it to each request: short "
                        f"inputs do not get the original model there ({DYNAMIC_ISSUE})")
    length = reach if max_model_len is None else max_model_len
    env = {}
    if length > reach:
        env["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
        warnings.append(f"--max-model-len {length:,} is beyond what {plan.spec} reads ({reach:,} tokens); vLLM "
                        "accepts it only with VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 and quality past the reach is "
                        "not measured")
    return VLLMExport(target, plan.spec, overrides, length, reach, env, warnings)


def _changed(overrides: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every rope_parameters dict of an override (one, or one per layer type)."""
    if overrides is None:
        return []
    params = overrides.get("text_config", overrides)["rope_parameters"]
    return list(params.values()) if all(isinstance(v, dict) for v in params.values()) else [params]


# ------------------------------------------------------------------------------------- config only
def read_config(model: str) -> tuple[Any, ModelInfo, str, list[str]]:
    """(transformers config, :class:`ModelInfo`, what ``vllm serve`` should load, warnings) without the
    weights: the config is read alone and the model is built on the ``meta`` device (no memory) so that
    :func:`~longreach.models.model_info` sees the same modules it sees after a real load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models import _converted_dir  # the packaged model's config kept by an earlier load (fast)

    name, folder, gguf = resolve_model(model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings: list[str] = []
    source, kwargs = str(folder), {}
    if gguf is not None:
        converted = _converted_dir(folder / gguf)
        if (converted / "config.json").exists():
            source = str(converted)
        else:
            kwargs = {"gguf_file": gguf}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a config transformers cannot build
        raise ModelError(f"cannot read the config of {model!r}: {str(exc).splitlines()[0]}") from None
    info = model_info(meta, name)
    if model in KNOWN_MODELS:
        target = HF_IDS[model]
        warnings.append(f"vLLM loads {target} from the Hugging Face Hub (the unquantized original of the "
                        f"packaged GGUF); to serve the packaged file instead: vllm serve {folder / gguf} "
                        f"--tokenizer {target} ...")
    elif gguf is not None:
        target = str((folder / gguf).resolve())
        warnings.append("vLLM's GGUF support is experimental and wants the original model's tokenizer: add "
                        "--tokenizer <Hugging Face id>")
    else:
        target = str(Path(folder).resolve())
    return config, info, target, warnings
