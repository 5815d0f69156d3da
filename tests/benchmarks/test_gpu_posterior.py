"""benchmarks/gpu_posterior.py: refuses without a GPU, and runs end to end on the CPU when allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_posterior.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    """The script in a fresh interpreter that sees no CUDA device."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_refuses_without_a_cuda_device(tmp_path):
    out = tmp_path / "gpu_posterior.json"
    result = run_script("--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no CUDA device; this benchmark is for a GPU (--allow-cpu runs it on the CPU)"
    ]
    assert not out.exists()


def test_runs_on_the_cpu_when_allowed(tmp_path, tiny_llama_dir, shared_data):
    out = tmp_path / "gpu_posterior.json"
    args = ("--allow-cpu", "--model", str(tiny_llama_dir), "--data-dir", str(shared_data), "--repeats", "1")
    result = run_script(*args, "--eval-batch-size", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(out.read_text())
    assert set(written["times_s"]) == {
        "eval_n10_loop_s",
        "eval_n10_stacked10_s",
        "train_step_blob_fp32_s",
        "train_step_mle_fp32_s",
    }
    assert all(t > 0 for t in written["times_s"].values())
    assert set(written["ratios"]) == {"stacked10_eval_speedup", "blob_over_mle_train_step"}
    assert written["device"] == "cpu" and written["device_name"]
    assert written["settings"] == {"train_batch_size": 4, "eval_batch_size": 2, "n_samples": 10}
    assert written["eval_extra_memory_mib"] == {}  # GPU memory only
    assert written["args"]["model"] == str(tiny_llama_dir)
