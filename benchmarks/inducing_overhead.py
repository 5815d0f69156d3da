"""What the inducing-weight method costs on top of LoRA: trainable parameters and training-step time.

On the offline SmolLM2 backbone with the default LoRA (r = 8 on q_proj, v_proj and lm_head):
  1. exact trainable-parameter counts of LoRA (``mle``) and ``inducing`` (diagonal and matrix-normal
     q), checked against the per-layer formula :func:`inducing_parameter_count`;
  2. median time of one training step (forward with a posterior draw, backward, optimiser step, the KL
     for the Bayesian methods) on 4 ARC-Easy prompts left-padded to 128 positions, under bf16 autocast,
     for LoRA, inducing and BLoB, timed round-robin so that slow spells hit every method alike.

    python benchmarks/inducing_overhead.py --out benchmarks/results/inducing_overhead.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from speed import ROOT, interleaved_medians, setup

from bayespeft.backbones import load_backbone, lora_targets
from bayespeft.config import ModelConfig, TrainConfig
from bayespeft.methods import TrainingContext, build_method
from bayespeft.methods.inducing import FACTOR_A, FACTOR_B, InducingLora, inducing_parameter_count

POSITIONS = 128
BATCH = 4
PRECISION = "bf16-autocast"


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def formula_count(method: InducingLora, model: torch.nn.Module) -> int:
    """The per-layer formula summed over the adapted layers (m_k = m_w = r: the defaults)."""
    total = 0
    for layer in method.bayesian_layers(model):
        factor_a, factor_b = getattr(layer, FACTOR_A)["default"], getattr(layer, FACTOR_B)["default"]
        (rank, d_in), d_out = factor_a.shape, factor_b.shape[0]
        m_k, m_w = factor_a.inducing_shape
        total += inducing_parameter_count(d_in, d_out, rank, m_k, m_w, method.config.posterior)
    return total


def long_batch(task, encoded: list) -> dict[str, torch.Tensor]:
    """The 4 longest prompts, cut to their last 128 tokens (as the task truncates) and left-padded to 128."""
    longest = sorted(encoded, key=lambda item: len(item.input_ids), reverse=True)[:BATCH]
    batch = task.collate([dataclasses.replace(item, input_ids=item.input_ids[-POSITIONS:]) for item in longest])
    missing = POSITIONS - batch["input_ids"].shape[1]
    batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (missing, 0), value=task.tokenizer.pad_token_id)
    batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (missing, 0), value=0)
    return batch


def make_step(model, method, task, batch):
    """One optimisation step (forward with sampling on, backward, update) on a fixed batch, as a closure."""
    model.train()
    context = TrainingContext(num_examples=2248, batch_size=BATCH, batches_per_epoch=562, total_steps=1000)
    optimization = method.build_optimization(model, TrainConfig(), context)

    def step() -> None:
        with method.sampling(True), torch.autocast("cpu", dtype=torch.bfloat16):
            nll = task.loss(task.class_logits(model, batch), batch["labels"])
        optimization.step(nll, lambda loss: loss.backward())

    return step


def matrix_inducing(args) -> tuple[torch.nn.Module, InducingLora]:
    """The inducing model with a matrix-normal q(V), for its parameter count."""
    model_cfg = ModelConfig(name=args.model)
    model, _, _ = load_backbone(model_cfg)
    method = build_method("inducing", posterior="matrix")
    return method.inject(model, model_cfg.lora, lora_targets(model, model_cfg), "CAUSAL_LM"), method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inducing_overhead.json"))
    args = parser.parse_args()

    built = {name: setup(name, PRECISION, args) for name in ("mle", "inducing", "blob")}
    lora_count = trainable_parameters(built["mle"][0])
    params: dict[str, dict[str, float]] = {}
    for posterior, (model, method) in (("diagonal", built["inducing"][:2]), ("matrix", matrix_inducing(args))):
        count = trainable_parameters(model)
        assert count == formula_count(method, model), "the parameter formula disagrees with the model"
        layers = len(method.bayesian_layers(model))
        params[posterior] = {
            "layers": layers,
            "inducing": count,
            "extra": count - lora_count,
            "extra_per_layer": (count - lora_count) / layers,
            "extra_over_lora": (count - lora_count) / lora_count,
        }

    _, _, task, encoded = built["mle"]
    batch = long_batch(task, encoded)
    steps = {f"train_step_{name}_s": make_step(*built[name][:3], batch) for name in built}
    times = interleaved_medians(steps, args.repeats)
    ratios = {
        "inducing_over_lora": times["train_step_inducing_s"] / times["train_step_mle_s"],
        "blob_over_lora": times["train_step_blob_s"] / times["train_step_mle_s"],
    }

    print(f"LoRA trainable parameters: {lora_count:,}")
    print(f"{'inducing q(V)':<16}{'trainable':>12}{'extra':>10}{'extra/layer':>13}{'extra/LoRA':>12}")
    for posterior, row in params.items():
        print(
            f"{posterior:<16}{row['inducing']:>12,}{row['extra']:>10,}{row['extra_per_layer']:>13.0f}"
            f"{row['extra_over_lora']:>11.2%}"
        )
    for key, value in times.items():
        print(f"{key:<32}{value:8.3f} s")
    for key, value in ratios.items():
        print(f"{key:<32}{value:8.2f} x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "lora_trainable": lora_count,
        "inducing_params": params,
        "times_s": times,
        "ratios": ratios,
        "batch": {"size": BATCH, "positions": POSITIONS, "real_tokens": int(batch["attention_mask"].sum())},
        "precision": PRECISION,
        "torch_threads": torch.get_num_threads(),
        "args": vars(args),
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
