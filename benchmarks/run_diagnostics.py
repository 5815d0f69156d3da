"""What a finished run's files say about why its posterior did or did not spread.

For each run directory: the mean |A| and |B| of its LoRA factors and, for BLoB-family methods, the
mean posterior std of each factor (from the saved rho); the training NLL averaged over windows of
--window steps and the total KL weight the schedule applied (sum of pi over the steps); the mean
confidence (max predictive probability) and accuracy of its predictions.

    python benchmarks/run_diagnostics.py runs/all_methods/arc_easy/{mle,blob,blob_gamma100,bbb,inducing} \\
        --window 25 --out benchmarks/results/arc_easy_run_diagnostics.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import torch
from safetensors.torch import load_file

from bayespeft.errors import ConfigError, RunDirError, exit_on_bad_input
from bayespeft.evaluation import predict
from bayespeft.experiments.report import load_predictions
from bayespeft.methods import build_method
from bayespeft.methods.base import ADAPTER_WEIGHTS, read_method_file
from bayespeft.methods.blob import posterior_std
from bayespeft.metrics.classification import (
    accuracy,
    expected_calibration_error,
    mutual_information,
    negative_log_likelihood,
)
from bayespeft.predictive import posterior_predictive_from_probs
from bayespeft.rundir import RunDir
from bayespeft.runs import load_trained_run, trained_session
from bayespeft.training import Session, load_examples

FACTORS = {"A": "lora_A", "B": "lora_B"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run directories")
    parser.add_argument("--window", type=int, default=25, help="training steps per NLL average")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--by-layer-kind", action="store_true", help="adapter statistics per kind of layer too")
    parser.add_argument("--held-draws", type=int, default=0, metavar="K", help="held-out examples to compare on")
    parser.add_argument("--signal-noise", type=int, default=0, metavar="K", help="held-out examples to measure on")
    return parser.parse_args()


def adapter_stats(run: RunDir, by_layer_kind: bool = False) -> dict[str, float]:
    """Mean |A|, |B| and (where the adapter has a rho) the mean posterior std of each factor; with
    ``by_layer_kind`` also per kind of adapted layer (q_proj, lm_head, ...), keys suffixed ``/<kind>``."""
    tensors = load_file(str(run.adapter / ADAPTER_WEIGHTS))
    saved = read_method_file(run.adapter)
    parameterization = getattr(build_method(saved["method"], **saved["config"]).config, "parameterization", None)
    groups = {"": tensors}
    if by_layer_kind:
        for key, tensor in tensors.items():
            if ".lora_" in key:
                kind = key.split(".lora_")[0].rsplit(".", 1)[-1]
                groups.setdefault(f"/{kind}", {})[key] = tensor
    stats = {}
    for suffix, group in groups.items():
        for factor, prefix in FACTORS.items():
            weights = [t.float().abs().flatten() for k, t in group.items() if k.endswith(f"{prefix}.weight")]
            if weights:
                stats[f"mean_abs_{factor}{suffix}"] = torch.cat(weights).mean().item()
            rhos = [t.float().flatten() for k, t in group.items() if k.endswith(f"{prefix}_rho")]
            if rhos and parameterization is not None:
                std = posterior_std(torch.cat(rhos), parameterization)
                stats[f"mean_std_{factor}{suffix}"] = std.mean().item()
    return stats


def training_stats(run: RunDir, window: int) -> dict[str, object]:
    """Training NLL per window of steps and the total KL weight (sum of pi); none for post-hoc runs."""
    if not run.train_log.is_file():
        return {}
    steps = [json.loads(line) for line in run.train_log.read_text().splitlines() if line.strip()]
    nll = [step["nll"] for step in steps]
    windows = [nll[start : start + window] for start in range(0, len(nll), window)]
    stats: dict[str, object] = {"nll_windows": [sum(w) / len(w) for w in windows]}
    if steps and "pi" in steps[0]:
        stats["total_kl_weight"] = sum(step["pi"] for step in steps)
    return stats


def signal_noise_stats(session: Session, examples: int) -> dict[str, dict[str, float]]:
    """Per kind of adapted layer: noise / signal of the sampled LoRA output and the std's selectivity."""
    config = session.config
    parameterization = getattr(session.method.config, "parameterization", None)
    if parameterization is None:
        return {}
    sums: dict[str, list[float]] = {}

    def hook(kind: str) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        return lambda module, inputs: measure(module, inputs, kind)

    def measure(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], kind: str) -> None:
        adapter = module.active_adapters[0]
        x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
        mean = module.lora_A[adapter].weight.detach().float()
        variance = posterior_std(module.lora_A_rho[adapter].detach().float(), parameterization).square()
        b = module.lora_B[adapter].weight.detach().float()
        scale = float(module.scaling[adapter]) ** 2
        gram, column_energy = b.T @ b, b.square().sum(0)  # [r, r] and sum_o B_oj^2 [r]
        hidden = x @ mean.T
        signal = scale * ((hidden @ gram) * hidden).sum()
        noise = scale * ((x.square() @ variance.T) @ column_energy).sum()
        uniform = scale * (x.square().sum(-1, keepdim=True) * variance.mean(-1) @ column_energy).sum()
        totals = sums.setdefault(kind, [0.0, 0.0, 0.0])
        for i, value in enumerate((signal, noise, uniform)):
            totals[i] += float(value)

    handles = [
        module.register_forward_pre_hook(hook(name.rsplit(".", 1)[-1]))
        for name, module in session.model.named_modules()
        if hasattr(module, "lora_A_rho")
    ]
    loaded = load_examples(config, config.data.eval_split, examples)
    predict(
        session.model,
        session.method,
        session.task,
        session.task.encode(loaded),
        dataclasses.replace(config.eval, n_samples=0),  # the posterior mean: its activations x
        session.accelerator,
        progress=False,
    )
    for handle in handles:
        handle.remove()
    return {
        kind: {"noise_over_signal": (noise / signal) ** 0.5, "selectivity": (noise / uniform) ** 0.5}
        for kind, (signal, noise, uniform) in sums.items()
    }


def held_draw_stats(session: Session, examples: int) -> dict[str, dict[str, float]]:
    """ACC / ECE / NLL / MI of N = 10 draws, per-token Flipout against one held draw per pass."""
    config = session.config
    if not session.method.stochastic:
        return {}
    encoded = session.task.encode(load_examples(config, config.data.eval_split, examples))
    as_trained = session.method.sampling
    out = {}
    for mode in ("flipout", "held"):
        if mode == "held":  # every sampling block of the evaluation holds its draws for all tokens

            def held(
                enabled: bool = True, seed: int | None = None, groups: int = 1, offset: int = 0, hold: bool = False
            ) -> ContextManager[None]:
                return as_trained(enabled, seed, groups, offset, hold=enabled)

            session.method.sampling = held
        torch.manual_seed(0)
        probs, labels = predict(
            session.model, session.method, session.task, encoded, config.eval, session.accelerator, progress=False
        )
        mean = posterior_predictive_from_probs(probs)
        out[mode] = {
            "acc": accuracy(mean, labels),
            "ece": expected_calibration_error(mean, labels),
            "nll": negative_log_likelihood(mean, labels),
            "mutual_information": float(mutual_information(probs).mean()),
        }
    session.method.sampling = as_trained
    return out


def prediction_stats(run: RunDir) -> dict[str, float]:
    records = load_predictions(run.root / "predictions.jsonl")
    return {
        "accuracy": sum(r["correct"] for r in records) / len(records),
        "mean_confidence": sum(r["confidence"] for r in records) / len(records),
    }


def main() -> None:
    args = parse_args()
    if args.window < 1:
        raise ConfigError(f"--window: must be >= 1 (got {args.window})")
    if args.held_draws < 0:
        raise ConfigError(f"--held-draws: must be >= 0 (got {args.held_draws})")
    if args.signal_noise < 0:
        raise ConfigError(f"--signal-noise: must be >= 0 (got {args.signal_noise})")
    rows = {}
    for path in args.runs:
        run = RunDir(path)
        if not run.adapter.is_dir():
            raise RunDirError(f"{path}: not a finished run (no adapter/)")
        rows[f"{path.parent.name}/{path.name}"] = (
            adapter_stats(run, args.by_layer_kind) | training_stats(run, args.window) | prediction_stats(run)
        )
        if args.held_draws or args.signal_noise:  # one session (model load) serves both measurements
            loaded, config = load_trained_run(run.root, ["eval.n_samples=10", "eval.samples_per_pass=1"])
            session = trained_session(loaded, config)
            if args.held_draws:
                rows[f"{path.parent.name}/{path.name}"]["held_draws"] = held_draw_stats(session, args.held_draws)
            if args.signal_noise:
                rows[f"{path.parent.name}/{path.name}"]["signal_noise"] = signal_noise_stats(session, args.signal_noise)

    for name, row in rows.items():
        cells = []
        for key, value in row.items():
            if isinstance(value, dict):
                shown = "; ".join(f"{k}: " + " ".join(f"{n}={v:.3g}" for n, v in vs.items()) for k, vs in value.items())
            elif isinstance(value, list):
                shown = " / ".join(f"{v:.3f}" for v in value)
            else:
                shown = f"{value:.4g}"
            cells.append(f"{key}={shown}")
        print(f"{name}: " + "  ".join(cells))
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    exit_on_bad_input(main)
