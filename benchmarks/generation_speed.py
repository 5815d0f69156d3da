"""Batched S-sample generation vs the per-sample loop: the same outputs, and the tokens/s of each.

SmolLM2-135M (offline) with BLoB on its default LoRA targets, B randomised and the posterior std
widened (``--eps``) so that weight draws give different answers, a handful of TriviaQA questions,
S draws per prompt, greedy decoding. Batched: one generate call for all S x prompts rows (prompts
repeated sample-major, one held draw per group). Loop: S generate calls, one per draw (offset s).
Both also return each sequence's log-likelihood under its draw. The two modes are timed
round-robin (so slow spells of a shared machine hit both alike) and compared token for token.

    OMP_NUM_THREADS=2 python benchmarks/generation_speed.py --out benchmarks/results/generation_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bayespeft.backbones import PEFT_TASK_TYPES, load_backbone, lora_targets
from bayespeft.config import ModelConfig
from bayespeft.generation import GeneratedSequence, GenerationConfig, generate_samples, generate_samples_loop
from bayespeft.methods import build_method

ROOT = Path(__file__).resolve().parents[1]


def load_prompts(data_dir: Path, count: int) -> list[str]:
    """The first ``count`` TriviaQA questions ("Question: ...\\nAnswer:")."""
    lines = (data_dir / "triviaqa" / "triviaqa_sm_sub.jsonl").read_text().splitlines()
    return [json.loads(line)["context"] for line in lines[:count]]


def blob_model(args: argparse.Namespace):
    """(method, model, tokenizer): BLoB on the backbone with a random B, so that draws differ."""
    model_config = ModelConfig(name=args.model)
    model, tokenizer, kind = load_backbone(model_config)
    method = build_method("blob", eps=args.eps)
    model = method.inject(model, model_config.lora, lora_targets(model, model_config), PEFT_TASK_TYPES[kind])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * args.b_scale)
    return method, model.eval(), tokenizer


def compare(batched: list[list[GeneratedSequence]], loop: list[list[GeneratedSequence]]) -> dict:
    """Whether every sequence has the same tokens in both modes, and the largest log-likelihood gap."""
    pairs = [(a, b) for pa, pb in zip(batched, loop, strict=True) for a, b in zip(pa, pb, strict=True)]
    return {
        "outputs_equal": all(a.token_ids == b.token_ids for a, b in pairs),
        "max_abs_log_likelihood_diff": max(abs(a.log_likelihood - b.log_likelihood) for a, b in pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.3, help="BLoB eps: the initial posterior std is ~eps^2")
    parser.add_argument("--b-scale", type=float, default=0.05, help="std of the random LoRA B entries")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation_speed.json"))
    args = parser.parse_args()

    prompts = load_prompts(Path(args.data_dir), args.prompts)
    method, model, tokenizer = blob_model(args)
    config = GenerationConfig(
        n_samples=args.samples, max_new_tokens=args.max_new_tokens, seed=0, prompts_per_batch=len(prompts)
    )
    modes = {"batched": generate_samples, "loop": generate_samples_loop}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    outputs: dict[str, list[list[GeneratedSequence]]] = {}
    for _ in range(args.repeats):  # round-robin; the first round's outputs are compared
        for mode, generate in modes.items():
            began = time.perf_counter()
            result = generate(model, tokenizer, method, prompts, config)
            times[mode].append(time.perf_counter() - began)
            print(f"{mode}: {times[mode][-1]:.1f} s", flush=True)
            outputs.setdefault(mode, result)

    tokens = sum(len(s.token_ids) for per_prompt in outputs["batched"] for s in per_prompt)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    tokens_per_s = {mode: tokens / seconds for mode, seconds in medians.items()}
    check = compare(outputs["batched"], outputs["loop"])
    distinct = [len({tuple(s.token_ids) for s in per_prompt}) for per_prompt in outputs["batched"]]
    record = {
        "model": args.model,
        "method": "blob",
        "strategy": config.strategy,
        "n_samples": args.samples,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "generated_tokens": tokens,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "times_s": times,
        "median_s": medians,
        "tokens_per_s": tokens_per_s,
        "speedup": medians["loop"] / medians["batched"],
        **check,
        "distinct_outputs_per_prompt": distinct,
        "examples": [per_prompt[0].text for per_prompt in outputs["batched"]],
        "args": vars(args),
    }
    print(f"{'mode':<10}{'median s':>10}{'tokens':>8}{'tokens/s':>10}")
    for mode in modes:
        print(f"{mode:<10}{medians[mode]:>10.2f}{tokens:>8}{tokens_per_s[mode]:>10.2f}")
    print(
        f"speedup {record['speedup']:.2f}x; outputs equal: {check['outputs_equal']} "
        f"(max |log-likelihood diff| {check['max_abs_log_likelihood_diff']:.2e}); "
        f"distinct outputs per prompt (of {args.samples}): {distinct}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
