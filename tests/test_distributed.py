"""Data-parallel evaluation over 2 CPU processes (gloo) reports exactly the metrics of one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bayespeft.cli import main


def test_two_processes_give_the_metrics_of_one(tmp_path, tiny_llama_dir, shared_data):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "-o",
                str(run),
                "--quiet",
                "--model",
                str(tiny_llama_dir),
                "--method",
                "blob",
                "--dataset",
                "arc_easy",
                "--data-dir",
                str(shared_data),
                "--max-train-examples",
                "12",
                "--max-eval-examples",
                "11",
                "--eval-batch-size",
                "2",
                "--max-steps",
                "3",
                "--batch-size",
                "2",
                "--lr",
                "0.01",
                "--n-samples",
                "3",
                "--kl-period",
                "epoch",
            ]
        )
        == 0
    )
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name, launcher in (("one", [sys.executable]), ("two", [torchrun, "--nproc_per_node", "2"])):
        done = subprocess.run(
            [*launcher, "-m", "bayespeft.cli", "evaluate", "--run-dir", str(run), "--quiet", "--name", name],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        score_lines = [line for line in done.stdout.splitlines() if line.startswith("blob on arc_easy")]
        assert len(score_lines) == 1, done.stdout  # the main process prints; the other rank stays quiet
    one, two = (json.loads((run / "eval" / n / "metrics.json").read_text())["metrics"] for n in ("one", "two"))
    assert one["num_examples"] == two["num_examples"] == 11  # 6 batches over 2 processes: none lost or doubled
    # the same batches and per-batch seeds: equal up to float32 rounding of differently threaded kernels
    assert one == pytest.approx(two, rel=1e-6, abs=1e-9)
    records = [
        [json.loads(line) for line in (run / "eval" / n / "predictions.jsonl").read_text().splitlines()]
        for n in ("one", "two")
    ]
    assert [(r["id"], r["prediction"]) for r in records[0]] == [(r["id"], r["prediction"]) for r in records[1]]
    for a, b in zip(*records, strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-6)
