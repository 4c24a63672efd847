"""BF16 and RoPE, measured: attention-logit error of bfloat16 vs float32 rotary angles, by position.

"When Precision Meets Position" (arXiv 2411.13476): with RoPE computed in bfloat16, the logit of a
query-key pair no longer depends on their distance only, and the error grows with the absolute position
because the angle ``p * theta_i`` is rounded. This script measures that on the packaged models with their
own queries and keys: a short essay passage goes through the bfloat16 model, a forward pre-hook on a few
full-attention layers (Gemma 3: its ``full_attention`` layers; the sliding ones use another base and never
see more than 512 tokens) recomputes the pre-RoPE q/k from the hidden states (``longreach.qk``: q_proj /
k_proj, then q_norm / k_norm), and each (query token, key token) pair is then placed at positions (p + d, p)
up to 32k and its logit ``q.k * scaling`` computed five ways:

  float64      reference: float64 angles and float64 math
  bf16-angles  positions and inv_freq in bfloat16, the angle product and cos/sin in bfloat16 (the paper's case)
  bf16-buffer  ``model.to(torch.bfloat16)`` in transformers 5.x: the inv_freq buffer is rounded to bfloat16,
               the rotary forward multiplies in float32, cos/sin are cast to bfloat16
  longreach    float32 inv_freq buffer (as longreach loads and installs it), float32 angles, cos/sin cast
               to bfloat16 at the end, q/k rotated in bfloat16: what the real bfloat16 model computes
  float32      everything in float32

The q/k values are the bfloat16 model's own, so every variant starts from the same numbers and the error is
the rotary embedding's alone (bf16 matmuls accumulate in float32; the final rounding of the logit itself
does not depend on position and is left out). Errors are reported as mean |logit - reference| relative to
the standard deviation of the reference logits (per layer, averaged over the layers), by distance bucket
(key positions spread over [0, 32k - d]) and by absolute query position (distances 0-128).

It also checks, on the models as ``longreach.load_model(..., dtype="bfloat16")`` returns them, that the
rotary inv_freq buffers are float32 and that an installed rope method (yarn:factor=4) installs float32
buffers, and compares the rotary module's cos at 32k with float64 (and with a plain bfloat16 copy).

    .venv/bin/python benchmarks/bf16_rope.py            # both packaged models, ~2 min on 2 CPU cores

Writes benchmarks/results/bf16-rope.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

import longreach
from longreach.bench.haystack import essays_folder
from longreach.bench.store import environment
from longreach.methods.rope.base import ALL_TYPES, default_inv_freq, find_rotary, rotary_slots
from longreach.qk import attention_modules, project_k, project_q
from longreach.spec import build_method, parse_spec

MODELS = ("smollm2-135m", "gemma3-270m")
MODES = ("bf16-angles", "bf16-buffer", "longreach", "float32")
MAX_POS = 32768
RESULTS = Path(__file__).resolve().parent / "results"
DIST_EDGES = (0, 1, 4, 16, 64, 256, 1024, 4096, 16384, MAX_POS + 1)
DIST_LABELS = ("0", "1-3", "4-15", "16-63", "64-255", "256-1023", "1k-4k", "4k-16k", "16k-32k")
QUERY_POSITIONS = (16, 256, 1024, 2048, 4096, 8192, 12288, 16384, 24576, MAX_POS)
NEAR_DISTANCES = (0, 1, 2, 4, 8, 16, 32, 64, 128)


# ------------------------------------------------------------------------------------------ the error
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (P, D) at ``positions`` (P,) for float64 ``inv_freq`` (D/2,), computed the way ``mode`` does."""
    if mode == "float64":
        angles = positions.double()[:, None] * inv_freq.double()  # (P, D/2)
        out = torch.float64
    elif mode == "bf16-angles":
        angles = positions.to(torch.bfloat16)[:, None] * inv_freq.float().to(torch.bfloat16)  # bf16 product
        out = torch.bfloat16
    elif mode == "bf16-buffer":
        buffer = inv_freq.float().to(torch.bfloat16)  # what model.to(bfloat16) does to the buffer
        angles = positions.float()[:, None] * buffer.float()  # the rotary forward: float32 product
        out = torch.bfloat16
    elif mode == "longreach":
        angles = positions.float()[:, None] * inv_freq.float()  # float32 buffer, float32 product
        out = torch.bfloat16
    elif mode == "float32":
        angles = positions.float()[:, None] * inv_freq.float()
        out = torch.float32
    else:
        raise ValueError(f"unknown mode {mode!r}; use float64 or one of {', '.join(MODES)}")
    emb = torch.cat([angles, angles], dim=-1)  # (P, D)
    return emb.cos().to(out), emb.sin().to(out)


def rope_logits(q: torch.Tensor, k: torch.Tensor, inv_freq: torch.Tensor, q_pos: torch.Tensor,
                k_pos: torch.Tensor, mode: str, scaling: float = 1.0) -> torch.Tensor:
    """Logits of every (query, key) pair with the queries at ``q_pos[g]`` and the keys at ``k_pos[g]``.

    q: (H, N, D), k: (H, M, D) pre-RoPE (grouped-query keys already repeated per head); q_pos, k_pos: (G,).
    Returns (G, H, N, M) float64. Rotation runs in the mode's dtype (bfloat16 for the bf16 modes and
    longreach, whose q/k are bfloat16 in the real model); the dot product accumulates in float32 (float64
    for the reference).
    """
    cq, sq = cos_sin(inv_freq, q_pos, mode)  # (G, D)
    ck, sk = cos_sin(inv_freq, k_pos, mode)
    dtype = cq.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    qx, kx = q.to(dtype)[None], k.to(dtype)[None]  # (1, H, N, D), (1, H, M, D)
    qr = qx * cq[:, None, None] + rotate_half(qx) * sq[:, None, None]  # (G, H, N, D)
    kr = kx * ck[:, None, None] + rotate_half(kx) * sk[:, None, None]  # (G, H, M, D)
    return (qr.to(acc) @ kr.to(acc).transpose(-1, -2)).double() * scaling  # (G, H, N, M)


def logit_errors(q: torch.Tensor, k: torch.Tensor, inv_freq: torch.Tensor, q_pos: torch.Tensor,
                 k_pos: torch.Tensor, scaling: float = 1.0, modes: tuple[str, ...] = MODES,
                 chunk: int = 32) -> tuple[dict[str, torch.Tensor], float]:
    """Mean |logit - float64 logit| per grid point (G,) for each mode, and the std of the reference logits."""
    errors: dict[str, list[torch.Tensor]] = {m: [] for m in modes}
    total = total_sq = count = 0.0
    for start in range(0, len(q_pos), chunk):
        qp, kp = q_pos[start:start + chunk], k_pos[start:start + chunk]
        ref = rope_logits(q, k, inv_freq, qp, kp, "float64", scaling)  # (g, H, N, M)
        total += ref.sum().item()
        total_sq += (ref ** 2).sum().item()
        count += ref.numel()
        for m in modes:
            err = (rope_logits(q, k, inv_freq, qp, kp, m, scaling) - ref).abs()
            errors[m].append(err.flatten(1).mean(1))  # (g,)
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return {m: torch.cat(v) for m, v in errors.items()}, std


# -------------------------------------------------------------------------------------------- grids
def distance_grid(max_pos: int = MAX_POS, per: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_pos, k_pos): distances 0 and 2^(j/2) up to ``max_pos``, each with ``per`` keys in [0, max_pos - d]."""
    distances = sorted({0, *(round(2 ** (j / 2)) for j in range(int(2 * math.log2(max_pos)) + 1))})
    qs, ks = [], []
    for d in distances:
        for p in sorted({round(x) for x in torch.linspace(0, max_pos - d, per).tolist()}):
            qs.append(p + d)
            ks.append(p)
    return torch.tensor(qs), torch.tensor(ks)


def position_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """(q_pos, k_pos): each query position of QUERY_POSITIONS with its keys NEAR_DISTANCES before it."""
    pairs = [(p, p - d) for p in QUERY_POSITIONS for d in NEAR_DISTANCES if d <= p]
    return torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])


def bucket_means(values: torch.Tensor, keys: torch.Tensor, edges: tuple[int, ...]) -> list[float]:
    """Mean of ``values`` (G,) per bucket [edges[i], edges[i+1]) of ``keys`` (G,)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (keys >= lo) & (keys < hi)
        out.append(values[sel].mean().item() if sel.any() else float("nan"))
    return out


# ---------------------------------------------------------------------------------- the real models
QK = tuple[torch.Tensor, torch.Tensor, float]  # pre-RoPE q (H, T, D), k (KV, T, D), logit scaling


class _Stop(Exception):
    """Raised by the last hook: the rest of the forward pass is not needed."""


def full_layers(info: Any) -> list[int]:
    """Up to three full-attention layers spread over the depth (a quarter, half, last)."""
    full = [i for i, t in enumerate(info.layer_types) if t != "sliding_attention"]
    return sorted({full[len(full) // 4], full[len(full) // 2], full[-1]})


@torch.inference_mode()
def capture_qk(lm: Any, ids: list[int], layers: list[int]) -> dict[int, QK]:
    """Pre-RoPE q (H, T, D), k (KV, T, D) and the logit scaling of each layer in ``layers``, one pass."""
    box: dict[int, QK] = {}
    handles = []

    def hook_for(index: int):
        def hook(attn: Any, args: tuple, kwargs: dict) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (1, T, hidden)
            q, k = project_q(attn, hidden), project_k(attn, hidden)  # (1, H, T, D), (1, KV, T, D), normed
            box[index] = (q[0].clone(), k[0].clone(), float(attn.scaling))
            if index == max(layers):
                raise _Stop
        return hook

    modules = attention_modules(lm.model)
    for i in layers:
        handles.append(modules[i].register_forward_pre_hook(hook_for(i), with_kwargs=True))
    try:
        lm.model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return box


def essay_ids(tokenizer: Any, tokens: int) -> list[int]:
    files = sorted(essays_folder().glob("*.txt"))
    text = " ".join(f.read_text(encoding="utf-8", errors="replace") for f in files[:2])
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:tokens]
    if len(ids) < tokens:
        raise SystemExit(f"the essays give only {len(ids)} tokens; need {tokens}")
    return ids


def model_frequencies(lm: Any) -> tuple[str, float, torch.Tensor]:
    """(layer type, base, float64 inv_freq) of the full-attention layers, checked against the model's buffer."""
    rotary = find_rotary(lm.model)
    slots = rotary_slots(rotary)
    layer_type = ALL_TYPES if ALL_TYPES in slots else "full_attention"
    rope = lm.info.rope.get("full_attention") or next(iter(lm.info.rope.values()))
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"{lm.name}: rope_type {rope['rope_type']!r}; this benchmark expects plain RoPE")
    inv = default_inv_freq(float(rope["rope_theta"]), lm.info.head_dim)  # (D/2,) float64
    buffer = getattr(rotary, slots[layer_type][0]).double()
    if not torch.allclose(buffer, inv, rtol=1e-6, atol=0):
        raise SystemExit(f"{lm.name}: the rotary buffer differs from base {rope['rope_theta']} frequencies")
    return layer_type, float(rope["rope_theta"]), inv


def rotary_cos_error(rotary: Any, layer_type: str, inv: torch.Tensor, positions: torch.Tensor) -> float:
    """Max |cos from the rotary module (bf16 input) - float64 cos| over ``positions``."""
    kwargs = {} if layer_type == ALL_TYPES else {"layer_type": layer_type}
    with torch.no_grad():
        cos, _ = rotary(torch.zeros(1, 1, dtype=torch.bfloat16), positions[None], **kwargs)  # (1, P, D)
    angles = positions.double()[:, None] * inv  # (P, D/2)
    ref = torch.cat([angles, angles], dim=-1).cos()
    return (cos[0].double() - ref).abs().max().item()


def buffer_dtypes(module: Any) -> dict[str, str]:
    return {n: str(b.dtype).replace("torch.", "") for n, b in module.named_buffers() if "inv_freq" in n}


def precision_check(lm: Any, layer_type: str, inv: torch.Tensor) -> dict[str, Any]:
    """Are the angles float32 on the model longreach loaded in bfloat16, and after installing yarn:factor=4?"""
    rotary = find_rotary(lm.model)
    far = torch.tensor([0, 4095, 8191, 16383, 24575, MAX_POS - 1])
    loaded = buffer_dtypes(lm.model)
    weights = str(next(lm.model.parameters()).dtype).replace("torch.", "")
    cos_err = rotary_cos_error(rotary, layer_type, inv, far)

    method = build_method(parse_spec("yarn:factor=4")[0])
    undo = method.install(lm.model, lm.info)
    try:
        installed = buffer_dtypes(rotary)
    finally:
        undo()
    restored = buffer_dtypes(lm.model)

    plain = copy.deepcopy(rotary).to(torch.bfloat16)  # what a plain model.to(bfloat16) does to the module
    plain_dtypes = buffer_dtypes(plain)
    plain_err = rotary_cos_error(plain, layer_type, inv, far)

    ok = (weights == "bfloat16" and all(v == "float32" for v in loaded.values())
          and all(v == "float32" for v in installed.values()) and restored == loaded and cos_err < 0.02)
    return {"weights": weights, "loaded_inv_freq": loaded, "yarn_installed_inv_freq": installed,
            "restored_inv_freq": restored, "max_cos_error_to_32k": cos_err,
            "plain_to_bf16_inv_freq": plain_dtypes, "plain_to_bf16_max_cos_error_to_32k": plain_err,
            "float32_angles": ok}


def measure(name: str, tokens: int, per: int) -> dict[str, Any]:
    lm = longreach.load_model(name, dtype="bfloat16")
    layer_type, theta, inv = model_frequencies(lm)
    check = precision_check(lm, layer_type, inv)
    ids = essay_ids(lm.tokenizer, tokens)
    layers = full_layers(lm.info)
    qk = capture_qk(lm, ids, layers)

    dq, dk = distance_grid(per=per)
    pq, pk = position_grid()
    by_dist: dict[str, list[list[float]]] = {m: [] for m in MODES}
    by_pos: dict[str, list[list[float]]] = {m: [] for m in MODES}
    abs_dist: dict[str, list[list[float]]] = {m: [] for m in MODES}
    stds = []
    n_q = n_k = 32
    for layer in layers:
        q, k, scaling = qk[layer]
        t = q.shape[1]
        q = q[:, torch.linspace(t // 2, t - 1, n_q).long()]  # (H, N, D): query tokens from the second half
        k = k[:, torch.linspace(1, t - 1, n_k).long()]  # (KV, M, D): key tokens after BOS
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # (H, M, D)
        err_d, std = logit_errors(q, k, inv, dq, dk, scaling)
        err_p, _ = logit_errors(q, k, inv, pq, pk, scaling)
        stds.append(std)
        for m in MODES:
            by_dist[m].append(bucket_means(err_d[m] / std, dq - dk, DIST_EDGES))
            abs_dist[m].append(bucket_means(err_d[m], dq - dk, DIST_EDGES))
            by_pos[m].append([(err_p[m][pq == p] / std).mean().item() for p in QUERY_POSITIONS])

    def avg(rows: list[list[float]]) -> list[float]:
        return [sum(col) / len(col) for col in zip(*rows, strict=True)]

    return {
        "model": name, "layers": layers, "layer_type": layer_type, "rope_theta": theta,
        "head_dim": lm.info.head_dim, "heads": lm.info.heads, "kv_heads": lm.info.kv_heads,
        "tokens": len(ids), "query_tokens": n_q, "key_tokens": n_k,
        "reference_logit_std": stds, "check": check,
        "relative_by_distance": {m: avg(v) for m, v in by_dist.items()},
        "absolute_by_distance": {m: avg(v) for m, v in abs_dist.items()},
        "relative_by_query_position": {m: avg(v) for m, v in by_pos.items()},
    }


# ------------------------------------------------------------------------------------------- output
def machine() -> dict[str, Any]:
    return environment()


def dtypes(buffers: dict[str, str]) -> str:
    return ", ".join(f"`{name.rsplit('.', 1)[-1]}` {dtype}" for name, dtype in buffers.items())


def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.3g}%"


def markdown(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    m = meta["machine"]
    lines = [
        "# BF16 and RoPE: attention-logit error by position",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores ({m['threads']} torch threads), {m['platform']}, "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}",
        "",
        "Logit of real (query, key) pairs from the bfloat16 models' full-attention layers, placed at positions "
        "(p + d, p) up to 32k; error = mean |logit - float64 logit| / std of the float64 logits, averaged over "
        "the layers. Variants: `bf16-angles` = positions, inv_freq and angles in bfloat16 (arXiv 2411.13476); "
        "`bf16-buffer` = a plain `model.to(torch.bfloat16)` in transformers 5 (inv_freq buffer rounded to "
        "bfloat16, float32 product); `longreach` = float32 buffer and angles, cos/sin and q/k in bfloat16 "
        "(the real bfloat16 model as longreach loads it); `float32` = everything float32. "
        "Plot: [bf16-rope.png](bf16-rope.png).",
        "",
        "## longreach keeps the angles in fp32: "
        + ("yes" if all(r["check"]["float32_angles"] for r in results) else "NO"),
        "",
    ]
    for r in results:
        c = r["check"]
        lines += [
            f"- {r['model']}: `longreach.load_model(..., dtype=\"bfloat16\")` gives {c['weights']} weights and "
            f"{dtypes(c['loaded_inv_freq'])}; `yarn:factor=4` installs {dtypes(c['yarn_installed_inv_freq'])} "
            f"(after undo: {dtypes(c['restored_inv_freq'])}). The rotary module's cos at positions up to 32k is "
            f"within {c['max_cos_error_to_32k']:.2g} of float64; a plain `.to(torch.bfloat16)` copy of the module "
            f"has {dtypes(c['plain_to_bf16_inv_freq'])} and is off by "
            f"{c['plain_to_bf16_max_cos_error_to_32k']:.2g}. "
            f"Float32 angles: {'yes' if c['float32_angles'] else 'NO'}.",
        ]
    for r in results:
        lines += ["", f"## {r['model']} (layers {r['layers']}, head dim {r['head_dim']}, base "
                  f"{r['rope_theta']:.4g}, {r['query_tokens']}x{r['key_tokens']} token pairs x {r['heads']} heads)",
                  "", "By distance d (key positions spread over [0, 32k - d]):", "",
                  "| distance | " + " | ".join(MODES) + " | abs. logit error: bf16-angles | longreach |",
                  "|---|" + "---:|" * (len(MODES) + 2)]
        for i, label in enumerate(DIST_LABELS):
            row = [pct(r["relative_by_distance"][m][i]) for m in MODES]
            absolute = [f"{r['absolute_by_distance'][m][i]:.3g}" for m in ("bf16-angles", "longreach")]
            lines.append(f"| {label} | " + " | ".join(row + absolute) + " |")
        lines += ["", "By absolute query position (distances 0-128):", "",
                  "| query position | " + " | ".join(MODES) + " |", "|---|" + "---:|" * len(MODES)]
        for i, p in enumerate(QUERY_POSITIONS):
            row = [pct(r["relative_by_query_position"][m][i]) for m in MODES]
            lines.append(f"| {p} | " + " | ".join(row) + " |")
    lines += ["", "## Conclusion", "", meta["conclusion"], ""]
    return "\n".join(lines)


def conclusion(results: list[dict[str, Any]]) -> str:
    parts = []
    for r in results:
        pos, dist = r["relative_by_query_position"], r["relative_by_distance"]
        ours = pos["longreach"] + dist["longreach"]
        parts.append(
            f"{r['model']}: bf16 angles are off by {pct(pos['bf16-angles'][-1])} of the logit spread at query "
            f"position 32k for nearby keys (d <= 128; {pct(pos['bf16-angles'][0])} at position 16), and a bf16 "
            f"inv_freq buffer by {pct(dist['bf16-buffer'][-1])} at distances 16k-32k ({pct(dist['bf16-buffer'][1])} "
            f"at 1-3); longreach's float32 angles stay between {pct(min(ours))} and {pct(max(ours))} at every "
            f"position and distance (float32 throughout: {pct(max(pos['float32'] + dist['float32']))} at most).")
    return (" ".join(parts) + " bfloat16 angles make the logit depend on the absolute position; a bfloat16 "
            "inv_freq buffer (transformers multiplies in float32) keeps the logit relative but gives each pair "
            "a slightly wrong frequency, so its error grows with the distance. Float32 angles with bfloat16 "
            "cos/sin and q/k leave a small rounding error that rises over the first few thousand positions "
            "(while the slow pairs' cos/sin leave 1 and 0) and then stays level up to 32k in both position and "
            "distance, so keeping inv_freq and the angles in float32 is enough; no extra correction is needed.")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.6 * len(results)), squeeze=False)
    edges = zip(DIST_EDGES[:-1], DIST_EDGES[1:], strict=True)
    mids = [max(lo, 0.5) * (2 if hi - lo > 1 else 1) for lo, hi in edges]  # x of each distance bucket
    for row, r in zip(axes, results, strict=True):
        for m in MODES:
            row[0].plot(mids, [100 * v for v in r["relative_by_distance"][m]], marker="o", label=m)
            by_pos = [100 * v for v in r["relative_by_query_position"][m]]
            row[1].plot(QUERY_POSITIONS, by_pos, marker="o", label=m)
        row[0].set_xscale("log")
        row[0].set_xticks(mids, DIST_LABELS, rotation=45, fontsize=8)
        row[0].minorticks_off()
        row[0].set_xlabel("relative distance d")
        row[1].set_xscale("log", base=2)
        row[1].set_xlabel("absolute query position (d <= 128)")
        for ax in row:
            ax.set_yscale("log")
            ax.set_ylabel("mean |logit error| / logit std (%)")
            ax.set_title(r["model"])
            ax.grid(True, which="major", alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated packaged model names")
    parser.add_argument("--tokens", type=int, default=256, help="tokens of essay text run through the model")
    parser.add_argument("--per", type=int, default=8, help="key positions per distance")
    parser.add_argument("--out", default=str(RESULTS / "bf16-rope"), help="results path without suffix")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = []
    for name in args.models.split(","):
        print(f"{name} ...", file=sys.stderr, flush=True)
        results.append(measure(name.strip(), args.tokens, args.per))
    meta = {"command": shlex.join([".venv/bin/python", "benchmarks/bf16_rope.py", *(argv or sys.argv[1:])]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "modes": MODES, "distance_buckets": DIST_LABELS,
            "query_positions": QUERY_POSITIONS, "near_distances": NEAR_DISTANCES,
            "conclusion": conclusion(results)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps({**meta, "results": results}, indent=2))
    out.with_name(out.name + ".md").write_text(markdown(meta, results))
    plot(results, out.with_name(out.name + ".png"))
    print(markdown(meta, results))


if __name__ == "__main__":
    main()
