"""Where the time goes on this machine: precision, last-position logits, stacked posterior draws.

Measures, in one process and one run (ratios, not absolute times, are the result):
  1. forward of a multiple-choice batch with full-sequence logits vs last-position logits;
  2. a BLoB training step in fp32, bf16 autocast and bf16 weights;
  3. an N-sample BLoB evaluation batch: N separate passes vs the N draws stacked in one pass;
  4. a training step of BLoB vs MLE (the Flipout + KL overhead), on SmolLM2 (ARC-Easy, batch 4) and
     MiniLM (MRPC, batch 16): step times interleaved in this process, and the peak RSS of a fresh
     process per arm that loads the model and trains only that arm for a few steps;
  5. cloze scoring with each question's stem run once (packed with its choices' own tokens) vs every
     choice row run whole: BLoB training steps of 4 questions and N = 10 evaluation batches of 8
     (draws stacked), over several batches, on ARC-Easy, OBQA and WinoGrande.

    python benchmarks/speed.py --out benchmarks/results/speed.json
    python benchmarks/speed.py --cloze-only   # part 5 only, merged into the existing file
    python benchmarks/speed.py --blob-mle-only   # part 4 only (both backbones), merged likewise
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bayespeft.backbones import load_backbone, lora_targets
from bayespeft.config import ModelConfig, TrainConfig
from bayespeft.data.classification import load_classification_dataset
from bayespeft.data.multiple_choice import load_mc_dataset
from bayespeft.methods import TrainingContext, build_method
from bayespeft.tasks.multiple_choice import ClozeMultipleChoiceTask, MultipleChoiceTask
from bayespeft.tasks.sequence_classification import SequenceClassificationTask

ROOT = Path(__file__).resolve().parents[1]


def setup(method_name: str, precision: str, args, device: str = "cpu"):
    """The backbone with the method's adapter on ``device``, the task, and 64 encoded ARC-Easy questions."""
    model_cfg = ModelConfig(name=args.model, precision=precision)
    model, tokenizer, _ = load_backbone(model_cfg)
    method = build_method(method_name)
    model = method.inject(model, model_cfg.lora, lora_targets(model, model_cfg), "CAUSAL_LM").to(device)
    task = MultipleChoiceTask(tokenizer, max_length=300)
    examples = load_mc_dataset("arc_easy", "train", args.data_dir, limit=64)
    encoded = task.encode(examples)
    return model, method, task, encoded


def make_train_step(method_name: str, precision: str, args, device: str = "cpu"):
    """One optimisation step (forward, backward, optimiser) on a fixed batch of 4 on ``device``, as a closure."""
    model, method, task, encoded = setup(method_name, precision, args, device)
    batch = {key: value.to(device) for key, value in task.collate(encoded[:4]).items()}
    model.train()
    context = TrainingContext(num_examples=2248, batch_size=4, batches_per_epoch=562, total_steps=1000)
    optimization = method.build_optimization(model, TrainConfig(), context)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")

    def step() -> None:
        with method.sampling(True), autocast:
            nll = task.loss(task.class_logits(model, batch), batch["labels"])
        optimization.step(nll, lambda loss: loss.backward())

    return step


def make_classifier_step(method_name: str, args) -> callable:
    """One optimisation step of MiniLM on a fixed MRPC batch of 16 (sequence classification), as a closure."""
    model_cfg = ModelConfig(name=MINILM)
    model, tokenizer, _ = load_backbone(model_cfg, num_labels=2)
    method = build_method(method_name)
    model = method.inject(model, model_cfg.lora, lora_targets(model, model_cfg), None)
    task = SequenceClassificationTask(tokenizer, 2, max_length=128)
    batch = task.collate(task.encode(load_classification_dataset("mrpc", "train", args.data_dir, limit=16)))
    model.train()
    context = TrainingContext(num_examples=3668, batch_size=16, batches_per_epoch=230, total_steps=1000)
    optimization = method.build_optimization(model, TrainConfig(), context)

    def step() -> None:
        with method.sampling(True):
            nll = task.loss(task.class_logits(model, batch), batch["labels"])
        optimization.step(nll, lambda loss: loss.backward())

    return step


MINILM = "minilm-l6"
PAIR_BACKBONES = {"smollm2": "", "minilm": "_minilm"}  # key suffix per backbone of the BLoB-vs-MLE pair


def pair_step(backbone: str, method_name: str, args) -> callable:
    """The training-step closure of one arm (blob or mle) of the BLoB-vs-MLE pair on ``backbone``."""
    if backbone == "minilm":
        return make_classifier_step(method_name, args)
    return make_train_step(method_name, "fp32", args)  # --model, SmolLM2 by default


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (VmHWM), in MiB.

    Not getrusage's ru_maxrss: Linux carries that over from the parent across fork and exec, so a
    child of a parent holding a model would report the parent's size.
    """
    status = Path("/proc/self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def arm_peak_rss(backbone: str, method_name: str, args) -> float:
    """Peak RSS (MiB) of a fresh process that loads ``backbone`` and trains only this arm for a few steps."""
    command = [sys.executable, __file__, "--rss-arm", backbone, method_name, "--data-dir", args.data_dir]
    command += ["--rss-steps", str(args.rss_steps)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"])


def blob_mle_pair(args) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """BLoB over MLE on both backbones: step times interleaved here, peak RSS (MiB) per arm in its own process."""
    times: dict[str, float] = {}
    rss: dict[str, float] = {}
    ratios: dict[str, float] = {}
    for backbone, suffix in PAIR_BACKBONES.items():
        runs: dict[str, list[float]] = {"blob": [], "mle": []}
        for _ in range(args.rss_runs):  # the arms alternate; the median over runs is kept
            for method_name, values in runs.items():
                values.append(arm_peak_rss(backbone, method_name, args))
        rss.update({f"{method_name}{suffix}": statistics.median(values) for method_name, values in runs.items()})
        steps = {f"pair_step_{m}{suffix}_s": pair_step(backbone, m, args) for m in runs}
        times.update(interleaved_medians(steps, args.pair_repeats))
        ratios[f"blob_mle_step_ratio{suffix}"] = times[f"pair_step_blob{suffix}_s"] / times[f"pair_step_mle{suffix}_s"]
        ratios[f"blob_mle_rss_ratio{suffix}"] = rss[f"blob{suffix}"] / rss[f"mle{suffix}"]
    return times, rss, ratios


CLOZE_DATASETS = {"arc_easy": "", "obqa": "_obqa", "winogrande_s": "_winogrande"}  # key suffix per dataset
HELD_OUT_SPLIT = {"arc_easy": "test", "obqa": "test", "winogrande_s": "validation"}  # the study's evaluation splits


def cloze_prefix_times(dataset: str, args) -> dict[str, float]:
    """Times of BLoB training steps and N = 10 evaluation batches, per-row vs shared-prefix cloze.

    One timing covers ``--cloze-batches`` training batches of 4 (a seeded shuffle of the study's 320
    training questions) or half as many evaluation batches of 8 (held-out questions), the same batches
    for both passes: questions differ widely in stem and choice lengths, so one batch is no measure.
    """
    model_cfg = ModelConfig(name=args.model, precision="fp32")
    model, tokenizer, _ = load_backbone(model_cfg)
    method = build_method("blob")
    model = method.inject(model, model_cfg.lora, lora_targets(model, model_cfg), "CAUSAL_LM")
    tasks = {cache: ClozeMultipleChoiceTask(tokenizer, max_length=300, prefix_cache=cache) for cache in (False, True)}
    train = tasks[True].encode(load_mc_dataset(dataset, "train", args.data_dir, limit=320))
    held_out = tasks[True].encode(load_mc_dataset(dataset, HELD_OUT_SPLIT[dataset], args.data_dir, limit=200))
    tasks[False].answer_labels = tasks[True].answer_labels
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    train_batches = [
        tasks[True].collate([train[i] for i in order[4 * b : 4 * b + 4]]) for b in range(args.cloze_batches)
    ]
    eval_batches = [tasks[True].collate(held_out[8 * b : 8 * b + 8]) for b in range(max(1, args.cloze_batches // 2))]
    context = TrainingContext(num_examples=2248, batch_size=4, batches_per_epoch=562, total_steps=1000)
    optimization = method.build_optimization(model, TrainConfig(), context)

    def train_steps(task: ClozeMultipleChoiceTask) -> None:
        model.train()
        for batch in train_batches:
            with method.sampling(True):
                nll = task.loss(task.class_logits(model, batch), batch["labels"])
            optimization.step(nll, lambda loss: loss.backward())

    def evaluate(task: ClozeMultipleChoiceTask) -> None:
        model.eval()
        for batch in eval_batches:
            with torch.no_grad(), method.sampling(True, seed=0):
                method.predictive_samples(model, task, batch, n_samples=10, samples_per_pass=10)

    suffix = CLOZE_DATASETS[dataset]
    functions = {}
    for cache, name in ((False, "per_row"), (True, "prefix")):
        functions[f"cloze_train_step_{name}{suffix}_s"] = functools.partial(train_steps, tasks[cache])
        functions[f"cloze_eval_n10_{name}{suffix}_s"] = functools.partial(evaluate, tasks[cache])
    times = interleaved_medians(functions, args.repeats)
    for key in list(times):  # per training step of 4 / per evaluation batch of 8
        times[key] /= len(train_batches) if key.startswith("cloze_train") else len(eval_batches)
    return times


def cloze_prefix_ratios(times: dict[str, float]) -> dict[str, float]:
    """Per-row time over shared-prefix time, for every dataset measured."""
    ratios = {}
    for suffix in CLOZE_DATASETS.values():
        for part, key in (("train", "cloze_train_step"), ("eval", "cloze_eval_n10")):
            if f"{key}_prefix{suffix}_s" in times:
                ratios[f"cloze_prefix_speedup_{part}{suffix}"] = (
                    times[f"{key}_per_row{suffix}_s"] / times[f"{key}_prefix{suffix}_s"]
                )
    return ratios


def interleaved_medians(functions: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median time of each function, timed round-robin so that slow spells hit all of them alike."""
    for fn in functions.values():
        fn()
    times: dict[str, list[float]] = {key: [] for key in functions}
    for _ in range(repeats):
        for key, fn in functions.items():
            began = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - began)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    parser.add_argument("--cloze-only", action="store_true", help="measure part 5 only; merge into --out")
    parser.add_argument("--cloze-batches", type=int, default=8, help="training batches per cloze timing (part 5)")
    parser.add_argument("--cloze-datasets", nargs="+", default=list(CLOZE_DATASETS), choices=list(CLOZE_DATASETS))
    parser.add_argument("--note", default="", help="how the machine was loaded, stored with the arguments")
    parser.add_argument("--blob-mle-only", action="store_true", help="measure part 4 only; merge into --out")
    parser.add_argument("--pair-repeats", type=int, default=15, help="interleaved steps per arm in part 4")
    parser.add_argument("--rss-runs", type=int, default=2, help="fresh processes per arm for the peak RSS")
    parser.add_argument("--rss-steps", type=int, default=3, help="training steps of each peak-RSS process")
    parser.add_argument("--rss-arm", nargs=2, metavar=("BACKBONE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_arm:  # a child of arm_peak_rss: train one arm, print the peak RSS
        step = pair_step(*args.rss_arm, args)
        for _ in range(args.rss_steps):
            step()
        print(json.dumps({"peak_rss_mib": peak_rss_mib()}))
        return
    if args.blob_mle_only:
        pair_times, rss, pair_ratios = blob_mle_pair(args)
        out = Path(args.out)
        previous = json.loads(out.read_text()) if out.is_file() else {"times_s": {}, "ratios": {}, "args": {}}
        meta = {key: value for key, value in previous.items() if key not in ("times_s", "ratios")}
        meta.update(peak_rss_mib=rss, blob_mle_args=vars(args))  # part 4's arguments; the others keep theirs
        write(out, {**previous["times_s"], **pair_times}, {**previous["ratios"], **pair_ratios}, meta)
        return
    cloze: dict[str, float] = {}
    for dataset in args.cloze_datasets:
        cloze.update(cloze_prefix_times(dataset, args))
    if args.cloze_only:  # the earlier parts and their arguments stay as they were
        out = Path(args.out)
        previous = json.loads(out.read_text()) if out.is_file() else {"times_s": {}, "ratios": {}, "args": {}}
        times = {**previous["times_s"], **cloze}
        measured = {dataset: vars(args) for dataset in args.cloze_datasets}  # arguments per dataset measured
        meta = {key: value for key, value in previous.items() if key not in ("times_s", "ratios")}
        meta["cloze_args"] = {**previous.get("cloze_args", {}), **measured}
        write(out, times, {**previous["ratios"], **cloze_prefix_ratios(times)}, meta)
        return
    results: dict[str, float] = dict(cloze)

    # 1. last-position logits vs the whole sequence (forward, batch 8)
    model, method, task, encoded = setup("blob", "fp32", args)
    batch = task.collate(encoded[:8])
    model.eval()

    def forward(keep: int) -> None:
        with torch.no_grad(), method.sampling(False):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)

    results.update(
        interleaved_medians(
            {"forward_full_logits_s": lambda: forward(0), "forward_last_logits_s": lambda: forward(1)}, args.repeats
        )
    )

    # 3. N = 10 draws: separate passes vs stacked in one pass
    def draws(stack: int, n: int = 10) -> None:
        with torch.no_grad():
            for _ in range(n // stack):
                with method.sampling(True, groups=stack):
                    task.class_logits(model, batch, repeats=stack)

    stacked = {
        f"eval_n10_{name}_s": functools.partial(draws, k)
        for name, k in (("loop", 1), ("stacked5", 5), ("stacked10", 10))
    }
    results.update(interleaved_medians(stacked, max(2, args.repeats // 2)))

    # 2 and 4. training steps (batch 4) by precision and by method, interleaved
    variants = (("blob", "fp32"), ("blob", "bf16-autocast"), ("blob", "bf16"), ("mle", "fp32"))
    steps = {f"train_step_{m}_{p}_s": make_train_step(m, p, args) for m, p in variants}
    results.update(interleaved_medians(steps, args.repeats))
    pair_times, rss, pair_ratios = blob_mle_pair(args)
    results.update(pair_times)

    ratios = {
        "last_position_speedup": results["forward_full_logits_s"] / results["forward_last_logits_s"],
        "bf16_autocast_train_speedup": results["train_step_blob_fp32_s"] / results["train_step_blob_bf16-autocast_s"],
        "bf16_weights_train_speedup": results["train_step_blob_fp32_s"] / results["train_step_blob_bf16_s"],
        "stacked5_eval_speedup": results["eval_n10_loop_s"] / results["eval_n10_stacked5_s"],
        "stacked10_eval_speedup": results["eval_n10_loop_s"] / results["eval_n10_stacked10_s"],
        "blob_over_mle_train_step": results["train_step_blob_fp32_s"] / results["train_step_mle_fp32_s"],
        **cloze_prefix_ratios(results),
        **pair_ratios,
    }
    write(Path(args.out), results, ratios, {"peak_rss_mib": rss, "args": vars(args)})


def write(out: Path, times: dict[str, float], ratios: dict[str, float], meta: dict) -> None:
    """Print the times and ratios and store them with the arguments (``meta``)."""
    for key, value in times.items():
        print(f"{key:<40}{value:10.3f} s")
    for key, value in meta.get("peak_rss_mib", {}).items():
        print(f"peak_rss_{key:<31}{value:10.0f} MiB")
    for key, value in ratios.items():
        print(f"{key:<40}{value:10.2f} x")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"times_s": times, "ratios": ratios, **meta}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
