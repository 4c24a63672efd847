"""ICL uncertainty: a tiny transformer predicts the mean and variance of in-context linear regression, vs Bayes.

"Towards Better Understanding of In-Context Learning Ability from In-Context Uncertainty Quantification"
(Liu, Cai, Chen, Li; arXiv 2405.15115) trains a transformer on in-context linear regression to output both
E[y | x, context] and Var(y | x, context), shows that in distribution it comes close to the Bayes-optimal
predictor, and that under task shift it does not keep doing Bayesian inference. This script reproduces that
setting at CPU scale:

  tasks     w ~ N(0, I_d), x ~ N(0, I_d), y = w.x + eps, eps ~ N(0, s^2)  (d = 5, s = 0.5 by default)
  model     a pre-norm transformer (3 layers, width 64, 4 heads, no positional encoding) over one token per
            context pair [x_j, y_j, 1] and one query token [x_i, 0, 0] per position; context tokens attend
            causally to context tokens, query i attends to context pairs j < i and to itself, so one sequence
            of N pairs trains and evaluates every context size 0..N-1 at once without leaking y_i. The head
            gives mean and log-variance, trained with the Gaussian negative log-likelihood on fresh tasks.
  Bayes     the closed-form posterior predictive of Bayesian linear regression: with A = I / tau^2 + X'X / s^2,
            mean = x'A^-1 X'y / s^2, variance = s^2 + x'A^-1 x. "bayes" uses the training prior (tau = 1,
            the training s); "bayes-oracle" knows the shifted test prior (only shown where it differs).

Evaluated by context size n (pairs before the query) on fresh tasks: MSE of the mean, Gaussian NLL (nats) and
the coverage of the central 90% interval (mean +- 1.645 sd; calibrated = 0.90), in distribution and under
three shifts: noise x2 (s = 1.0), w x2 (w ~ N(0, 4 I)), x shifted (x ~ N(1, I)). The training prior's Bayes
predictor is still exact under the x shift (the posterior conditions on x), not under the other two.

    .venv/bin/python benchmarks/icl_uncertainty.py            # full run: 2000 steps, ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/icl_uncertainty.py --quick    # 300 steps, ~1 min smoke run (writes to the temp folder)

Writes benchmarks/results/icl-uncertainty.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
Z90 = 1.6448536269514722  # standard normal quantile 0.95: mean +- Z90 * sd covers 90%
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Prior:
    """The task distribution: w ~ N(0, w_scale^2 I_d), x ~ N(x_shift, I_d), y = w.x + N(0, noise^2)."""

    d: int = 5
    noise: float = 0.5
    w_scale: float = 1.0
    x_shift: float = 0.0


def conditions(train: Prior) -> dict[str, Prior]:
    """The evaluation distributions: the training one and three shifts."""
    return {
        "in distribution": train,
        "noise x2": Prior(train.d, 2 * train.noise, train.w_scale, train.x_shift),
        "w x2": Prior(train.d, train.noise, 2 * train.w_scale, train.x_shift),
        "x shifted +1": Prior(train.d, train.noise, train.w_scale, train.x_shift + 1.0),
    }


# ------------------------------------------------------------------------------------------- the tasks
def sample_tasks(rng: np.random.Generator, prior: Prior, n_tasks: int, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """x (B, N, d), y (B, N) float64: n_tasks regression tasks of n_points pairs each."""
    w = prior.w_scale * rng.standard_normal((n_tasks, prior.d))  # (B, d)
    x = prior.x_shift + rng.standard_normal((n_tasks, n_points, prior.d))  # (B, N, d)
    y = np.einsum("bnd,bd->bn", x, w) + prior.noise * rng.standard_normal((n_tasks, n_points))  # (B, N)
    return x, y


def bayes_predictive(x: np.ndarray, y: np.ndarray, noise: float, w_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Posterior predictive mean, variance (B, N) of y_i given the pairs j < i and x_i, for w ~ N(0, w_scale^2 I),
    noise ~ N(0, noise^2): A = I / w_scale^2 + sum_j x_j x_j' / noise^2, mean = x_i'A^-1 sum_j x_j y_j / noise^2,
    variance = noise^2 + x_i'A^-1 x_i."""
    b, n, d = x.shape
    outer = np.einsum("bni,bnj->bnij", x, x)  # (B, N, d, d)
    xx = np.cumsum(outer, axis=1) - outer  # (B, N, d, d): sum over j < i
    xy = np.cumsum(x * y[..., None], axis=1) - x * y[..., None]  # (B, N, d)
    a = np.eye(d) / w_scale**2 + xx / noise**2  # (B, N, d, d) posterior precision
    sol = np.linalg.solve(a, np.stack([xy / noise**2, x], axis=-1))  # (B, N, d, 2): A^-1 [X'y / s^2, x_i]
    mean = np.einsum("bnd,bnd->bn", x, sol[..., 0])
    var = noise**2 + np.einsum("bnd,bnd->bn", x, sol[..., 1])
    return mean, var


def gaussian_nll(y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Negative log density of y under N(mean, var), in nats, elementwise."""
    return 0.5 * (LOG_2PI + np.log(var) + (y - mean) ** 2 / var)


def covered(y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Whether y lies in the central 90% interval of N(mean, var), elementwise."""
    return np.abs(y - mean) <= Z90 * np.sqrt(var)


# ------------------------------------------------------------------------------------------- the model
def attention_mask(n: int) -> torch.Tensor:
    """(2N, 2N) bool, True = blocked. Tokens 0..N-1 are context pairs (pair j sees pairs <= j), tokens N..2N-1
    queries (query i sees pairs < i and itself, never y_i or a later pair)."""
    i = torch.arange(n)
    blocked = torch.ones(2 * n, 2 * n, dtype=torch.bool)
    blocked[:n, :n] = i[None, :] > i[:, None]  # context: causal
    blocked[n:, :n] = i[None, :] >= i[:, None]  # query i: pairs j < i
    blocked[n + i, n + i] = False  # and itself
    return blocked


class ICLRegressor(nn.Module):
    """Set-style transformer for in-context regression: pairs and queries in, mean and log-variance out.

    ``y_scale`` is a fixed unit for y (the training distribution's marginal sd), applied to inputs and outputs
    so that the network works with O(1) numbers; it is a constant, never recomputed at test time."""

    def __init__(self, d: int, width: int = 64, layers: int = 3, heads: int = 4, y_scale: float = 1.0) -> None:
        super().__init__()
        self.d, self.y_scale = d, y_scale
        self.embed = nn.Linear(d + 2, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)
        self._masks: dict[int, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, d), y (B, N) -> mean (B, N), log_var (B, N): the prediction of y_i from pairs j < i and x_i."""
        b, n, _ = x.shape
        if n not in self._masks:
            self._masks[n] = attention_mask(n)
        ys = (y / self.y_scale)[..., None]  # (B, N, 1)
        ctx = torch.cat([x, ys, torch.ones_like(ys)], dim=-1)  # (B, N, d + 2)
        qry = torch.cat([x, torch.zeros_like(ys), torch.zeros_like(ys)], dim=-1)  # (B, N, d + 2)
        h = self.blocks(self.embed(torch.cat([ctx, qry], dim=1)), mask=self._masks[n])  # (B, 2N, W)
        out = self.head(self.norm(h[:, n:]))  # (B, N, 2)
        log_var = 8.0 * torch.tanh(out[..., 1] / 8.0)  # soft clamp to (-8, 8) in y_scale units
        return out[..., 0] * self.y_scale, log_var + 2 * math.log(self.y_scale)


def nll_loss(y: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian NLL (nats) over all tasks and context sizes."""
    return 0.5 * (LOG_2PI + log_var + (y - mean) ** 2 * torch.exp(-log_var)).mean()


def build_model(prior: Prior, seed: int, width: int = 64, layers: int = 3, heads: int = 4) -> ICLRegressor:
    torch.manual_seed(seed)
    y_scale = math.sqrt(prior.d * prior.w_scale**2 + prior.noise**2)
    return ICLRegressor(prior.d, width, layers, heads, y_scale)


def train(model: ICLRegressor, prior: Prior, steps: int, n_points: int, batch: int, lr: float, seed: int,
          log_every: int = 0) -> list[dict[str, float]]:
    """AdamW with linear warmup and cosine decay on fresh tasks each step; returns the loss curve."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    curve, window, t0 = [], [], time.perf_counter()
    model.train()
    for step in range(steps):
        x, y = (torch.from_numpy(a).float() for a in sample_tasks(rng, prior, batch, n_points))
        loss = nll_loss(y, *model(x, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(loss.item())
        if (step + 1) % max(1, steps // 50) == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "loss": float(np.mean(window)), "seconds": time.perf_counter() - t0})
            window = []
            if log_every and len(curve) % log_every == 0:
                print(f"  step {step + 1}/{steps}: loss {curve[-1]['loss']:.3f} ({curve[-1]['seconds']:.0f} s)",
                      file=sys.stderr, flush=True)
    model.eval()
    return curve


def seconds_per_step(model: ICLRegressor, prior: Prior, n_points: int, batch: int, probe: int = 8) -> float:
    """Time a few training steps on a throwaway copy (own data, own optimizer): the real run is untouched."""
    model = copy.deepcopy(model)
    rng = np.random.default_rng(12345)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t0 = 0.0
    for step in range(probe + 2):
        if step == 2:
            t0 = time.perf_counter()
        x, y = (torch.from_numpy(a).float() for a in sample_tasks(rng, prior, batch, n_points))
        loss = nll_loss(y, *model(x, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / probe


@torch.no_grad()
def model_predictive(model: ICLRegressor, x: np.ndarray, y: np.ndarray,
                     chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The model's mean, variance (B, N) as float64 numpy."""
    means, variances = [], []
    for s in range(0, len(x), chunk):
        m, lv = model(torch.from_numpy(x[s:s + chunk]).float(), torch.from_numpy(y[s:s + chunk]).float())
        means.append(m.double().numpy())
        variances.append(lv.double().exp().numpy())
    return np.concatenate(means), np.concatenate(variances)


# ------------------------------------------------------------------------------------------- evaluation
def scores(y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> dict[str, list[float]]:
    """Per context size n (columns of y): MSE, NLL, 90% coverage, mean predicted variance."""
    return {"mse": ((y - mean) ** 2).mean(0).tolist(), "nll": gaussian_nll(y, mean, var).mean(0).tolist(),
            "coverage90": covered(y, mean, var).mean(0).tolist(), "pred_var": var.mean(0).tolist()}


def evaluate(model: ICLRegressor, train_prior: Prior, n_tasks: int, n_points: int, seed: int) -> dict[str, Any]:
    out = {}
    for k, (name, prior) in enumerate(conditions(train_prior).items()):
        x, y = sample_tasks(np.random.default_rng(seed + 1000 + k), prior, n_tasks, n_points)
        preds = {"model": model_predictive(model, x, y),
                 "bayes": bayes_predictive(x, y, train_prior.noise, train_prior.w_scale)}
        if (prior.noise, prior.w_scale) != (train_prior.noise, train_prior.w_scale):
            preds["bayes-oracle"] = bayes_predictive(x, y, prior.noise, prior.w_scale)
        out[name] = {"prior": asdict(prior), "predictors": {p: scores(y, *mv) for p, mv in preds.items()}}
    return out


# ------------------------------------------------------------------------------------------- output
def avg(values: list[float]) -> float:
    return float(np.mean(values))


def conclusion(evaluation: dict[str, Any], d: int) -> str:
    """Plain-language summary computed from the numbers (context sizes averaged with equal weight)."""
    parts = []
    for name, r in evaluation.items():
        p = r["predictors"]
        m, b = p["model"], p["bayes"]
        s = (f"{name}: model NLL {avg(m['nll']):.3f} vs Bayes {avg(b['nll']):.3f}"
             f" (training prior)")
        if "bayes-oracle" in p:
            s += f", {avg(p['bayes-oracle']['nll']):.3f} (oracle)"
        s += (f"; MSE ratio model/Bayes {avg(m['mse']) / avg(b['mse']):.2f}; 90% coverage model "
              f"{avg(m['coverage90']):.2f}, Bayes {avg(b['coverage90']):.2f}")
        if "bayes-oracle" in p:
            s += f", oracle {avg(p['bayes-oracle']['coverage90']):.2f}"
        parts.append(s)
    ind = evaluation["in distribution"]["predictors"]
    gap = avg(ind["model"]["nll"]) - avg(ind["bayes"]["nll"])
    late = slice(2 * d, None)
    late_gap = avg(ind["model"]["nll"][late]) - avg(ind["bayes"]["nll"][late])
    head = (f"In distribution the model is {gap:.3f} nats/prediction above the Bayes-optimal NLL on average "
            f"({late_gap:.3f} for n >= {2 * d}). ")
    return head + "; ".join(parts) + "."


def markdown(meta: dict[str, Any], evaluation: dict[str, Any]) -> str:
    m, cfg = meta["machine"], meta["config"]
    lines = [
        "# ICL uncertainty: in-context linear regression, mean and variance, vs Bayes",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores ({m['threads']} torch threads), Python {m['python']}, "
        f"torch {m['torch']}  ",
        f"Training: {cfg['steps']} steps x {cfg['batch']} tasks of {cfg['points']} pairs, "
        f"{meta['train_seconds']:.0f} s"
        + (f" (cut from {cfg['steps_requested']} to fit --budget-s {cfg['budget_s']:g})"
           if cfg["steps"] != cfg["steps_requested"] else "") + "; "
        f"evaluation {cfg['eval_tasks']} tasks per condition, {meta['eval_seconds']:.0f} s",
        "",
        "Seed paper: arXiv 2405.15115 (Liu et al., in-context uncertainty quantification). Tasks: "
        f"w ~ N(0, I_{cfg['d']}), x ~ N(0, I), y = w.x + N(0, {cfg['noise']}^2). Model: "
        f"{cfg['layers']}-layer transformer, width {cfg['width']}, {cfg['heads']} heads, "
        f"{meta['parameters']:,} parameters, trained on the Gaussian NLL; "
        "`bayes` = posterior predictive of Bayesian linear regression with the training prior, `bayes-oracle` = "
        "with the shifted test prior. n = number of in-context pairs before the query; NLL in nats; coverage of "
        "the central 90% interval (calibrated = 0.90). Final training loss "
        f"{meta['curve'][-1]['loss']:.3f}. Plot: [icl-uncertainty.png](icl-uncertainty.png).",
        "",
        meta["conclusion"],
    ]
    n_points = cfg["points"]
    shown = sorted({n for n in (0, 1, 2, cfg["d"] // 2, cfg["d"], cfg["d"] + 1, 2 * cfg["d"], 3 * cfg["d"],
                                n_points - 1) if n < n_points})
    for name, r in evaluation.items():
        p = r["predictors"]
        preds = list(p)
        pr = r["prior"]
        lines += ["", f"## {name} (noise {pr['noise']}, w scale {pr['w_scale']}, x shift {pr['x_shift']})", ""]
        head = ["n"] + [f"MSE {q}" for q in preds] + [f"NLL {q}" for q in preds] + [f"cov90 {q}" for q in preds]
        lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        rows = [(str(n), n) for n in shown] + [("mean", None)]
        for label, n in rows:
            cells = [avg(p[q][key]) if n is None else p[q][key][n]
                     for key in ("mse", "nll", "coverage90") for q in preds]
            lines.append(f"| {label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def minor_label(v: float, _pos: int) -> str:
    """Label the 2x and 5x minor ticks of a log axis."""
    return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v)), 6) in (2.0, 5.0) else ""


def plot(evaluation: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = list(evaluation)
    metrics = (("mse", "MSE of the mean", True), ("nll", "NLL (nats)", False), ("coverage90", "90% coverage", False))
    fig, axes = plt.subplots(len(metrics), len(names), figsize=(4.2 * len(names), 3.2 * len(metrics)), squeeze=False)
    style = {"model": ("C0", "-", "o"), "bayes": ("C1", "--", None), "bayes-oracle": ("C2", ":", None)}
    for col, name in enumerate(names):
        for row, (key, label, log) in enumerate(metrics):
            ax = axes[row][col]
            for q, vals in evaluation[name]["predictors"].items():
                color, ls, marker = style[q]
                ax.plot(range(len(vals[key])), vals[key], color=color, linestyle=ls, marker=marker, markersize=3,
                        label=q)
            if key == "coverage90":
                ax.axhline(0.9, color="grey", linewidth=0.8)
                ax.set_ylim(0, 1.02)
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(FuncFormatter(minor_label))
            ax.set_xlabel("in-context examples n")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            if row == 0:
                ax.set_title(name)
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 steps, 500 evaluation tasks")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2000, quick 300)")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="training time budget: if a timed probe says --steps would take longer, train fewer "
                             "steps (recorded in the results); 0 = no limit")
    parser.add_argument("--batch", type=int, default=64, help="tasks per training step")
    parser.add_argument("--d", type=int, default=5, help="input dimension")
    parser.add_argument("--noise", type=float, default=0.5, help="training noise sd s")
    parser.add_argument("--points", type=int, default=None, help="pairs per sequence (context sizes 0..points-1; "
                                                                   "default 4d)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-tasks", type=int, default=None, help="tasks per condition (default 4000, quick 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the model is too small to gain "
                                                               "from more, and it keeps a busy machine usable)")
    parser.add_argument("--out", default=None, help="results path without suffix (default results/icl-uncertainty; "
                                                    "quick: icl-uncertainty-quick in the temp folder)")
    args = parser.parse_args(argv)
    requested = args.steps if args.steps is not None else (300 if args.quick else 2000)
    eval_tasks = args.eval_tasks if args.eval_tasks is not None else (500 if args.quick else 4000)
    points = args.points or 4 * args.d
    out = Path(args.out or (Path(tempfile.gettempdir()) / "icl-uncertainty-quick" if args.quick
                            else RESULTS / "icl-uncertainty"))
    torch.set_num_threads(args.threads)
    prior = Prior(args.d, args.noise)
    model = build_model(prior, args.seed, args.width, args.layers, args.heads)
    per_step = seconds_per_step(model, prior, points, args.batch)
    steps = requested
    if args.budget_s > 0 and requested * per_step > args.budget_s:
        steps = max(1, int(args.budget_s / per_step))
        print(f"{requested} steps would take ~{requested * per_step:.0f} s at {per_step:.3f} s/step: training "
              f"{steps} steps to stay within --budget-s {args.budget_s:g}", file=sys.stderr, flush=True)
    print(f"training {steps} steps (~{steps * per_step:.0f} s) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    curve = train(model, prior, steps, points, args.batch, args.lr, args.seed, log_every=10)
    t1 = time.perf_counter()
    evaluation = evaluate(model, prior, eval_tasks, points, args.seed)
    t2 = time.perf_counter()
    from longreach.bench.store import environment

    meta = {"command": shlex.join([".venv/bin/python", "benchmarks/icl_uncertainty.py", *(argv or sys.argv[1:])]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": environment(), "paper": "arXiv 2405.15115",
            "config": {"steps": steps, "steps_requested": requested, "budget_s": args.budget_s,
                       "probe_seconds_per_step": per_step, "batch": args.batch, "d": args.d, "noise": args.noise,
                       "points": points,
                       "width": args.width, "layers": args.layers, "heads": args.heads, "lr": args.lr,
                       "eval_tasks": eval_tasks, "seed": args.seed},
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": t1 - t0, "eval_seconds": t2 - t1, "curve": curve,
            "conclusion": conclusion(evaluation, args.d)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps({**meta, "results": evaluation}, indent=2))
    out.with_name(out.name + ".md").write_text(markdown(meta, evaluation))
    plot(evaluation, out.with_name(out.name + ".png"))
    print(markdown(meta, evaluation))


if __name__ == "__main__":
    main()
