"""Stacked posterior draws and BLoB's training-step overhead on a GPU (issue 16, item 4).

On the offline SmolLM2 backbone and ARC-Easy prompts (speed.py's setup), timed round-robin in one process:
  1. one evaluation batch (eval.batch_size questions, as ``bayespeft evaluate`` runs it) under a BLoB adapter with
     N = 10 posterior draws: stacked in one pass (eval.samples_per_pass = 10) vs one pass per draw
     (samples_per_pass = 1), with the GPU memory each needs on top of the loaded models;
  2. a training step (forward with a draw, backward, optimiser step, batch 4) of BLoB vs MLE.
Writes the times, the ratios, the GPU's name and the settings to benchmarks/results/gpu_posterior.json. Without a
CUDA device it refuses (exit 2); --allow-cpu runs it on the CPU anyway, to check the script end to end.

    python benchmarks/gpu_posterior.py
    python benchmarks/gpu_posterior.py --allow-cpu --model PATH --repeats 1 --out /tmp/gpu_posterior.json
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from speed import ROOT, interleaved_medians, make_train_step, setup, write

from bayespeft.config import EvalConfig
from bayespeft.errors import ConfigError, exit_on_bad_input
from bayespeft.evaluation import predict


def device_or_refuse(allow_cpu: bool) -> str:
    """``cuda`` when a CUDA device is present; otherwise ``cpu`` if allowed, else refused (exit 2 from the script)."""
    if torch.cuda.is_available():
        return "cuda"
    if not allow_cpu:
        raise ConfigError("no CUDA device; this benchmark is for a GPU (--allow-cpu runs it on the CPU)")
    return "cpu"


def synchronized(fn: Callable[[], None], device: str) -> Callable[[], None]:
    """``fn`` that also waits for the work it queued on a GPU, so that wall-clock times count it."""
    if device != "cuda":
        return fn

    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return run


def extra_memory_mib(fn: Callable[[], None]) -> float:
    """Peak GPU memory one call of ``fn`` allocates beyond what is allocated before it, in MiB."""
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def make_evaluation(args: argparse.Namespace, device: str) -> dict[str, Callable[[], None]]:
    """One batch of questions evaluated as ``bayespeft evaluate`` does (:func:`bayespeft.evaluation.predict`) under a
    fresh BLoB adapter, with the N draws looped (eval.samples_per_pass = 1) and stacked (= N), keyed as in speed.json.
    """
    model, method, task, encoded = setup("blob", args.precision, args, device)
    mixed = "bf16" if args.precision == "bf16-autocast" else "no"
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed)
    items = encoded[: args.eval_batch_size]
    n = args.n_samples

    def evaluate(samples_per_pass: int) -> None:
        config = EvalConfig(n_samples=n, batch_size=len(items), samples_per_pass=samples_per_pass)
        predict(model, method, task, items, config, accelerator, progress=False)

    return {f"eval_n{n}_loop_s": lambda: evaluate(1), f"eval_n{n}_stacked{n}_s": lambda: evaluate(n)}


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's as the platform reports it."""
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16-autocast", "bf16"])
    parser.add_argument("--n-samples", type=int, default=EvalConfig().n_samples, help="posterior draws N")
    parser.add_argument("--eval-batch-size", type=int, default=EvalConfig().batch_size, help="questions per batch")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls of each variant (after one warm-up)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when no CUDA device is present")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_posterior.json"))
    parser.add_argument("--note", default="", help="how the machine was loaded, stored with the arguments")
    args = parser.parse_args()
    device = device_or_refuse(args.allow_cpu)

    n, precision = args.n_samples, args.precision
    functions = make_evaluation(args, device)
    for method_name in ("blob", "mle"):
        functions[f"train_step_{method_name}_{precision}_s"] = make_train_step(method_name, precision, args, device)
    functions = {key: synchronized(fn, device) for key, fn in functions.items()}
    times = interleaved_medians(functions, args.repeats)
    ratios = {
        f"stacked{n}_eval_speedup": times[f"eval_n{n}_loop_s"] / times[f"eval_n{n}_stacked{n}_s"],
        "blob_over_mle_train_step": times[f"train_step_blob_{precision}_s"] / times[f"train_step_mle_{precision}_s"],
    }
    evaluations = (f"eval_n{n}_loop", f"eval_n{n}_stacked{n}")
    memory = {key: extra_memory_mib(functions[f"{key}_s"]) for key in evaluations} if device == "cuda" else {}
    meta = {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "settings": {"train_batch_size": 4, "eval_batch_size": args.eval_batch_size, "n_samples": n},
        "eval_extra_memory_mib": memory,
        "args": vars(args),
    }
    write(Path(args.out), times, ratios, meta)


if __name__ == "__main__":
    exit_on_bad_input(main)
