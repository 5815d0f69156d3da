"""Two gloo processes on the CPU, each updating with half the data, compute the one-process values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bayespeft.metrics import predictive_entropy
from bayespeft.metrics.streaming import (
    AURAC,
    AURC,
    BrierScore,
    CalibrationError,
    MutualInformation,
    NegativeLogLikelihood,
    PredictiveEntropy,
    UncertaintyAUROC,
)

N = 103  # odd, so the halves differ in size and the gathered list states need padding
SPLIT = 53


def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sample_probs = torch.softmax(torch.randn(N, 4, 5, generator=g) * 2, dim=-1).double()
    labels = torch.randint(0, 5, (N,), generator=g)
    probs = sample_probs.mean(dim=1)
    uncertainty = predictive_entropy(probs)
    return {
        "sample_probs": sample_probs,
        "probs": probs,
        "labels": labels,
        "uncertainty": uncertainty,
        "correct": probs.argmax(dim=1).eq(labels),
    }


def scores(part: dict[str, torch.Tensor]) -> dict[str, float | list[float]]:
    """Every metric updated with ``part`` (in two batches) and computed; synchronised when distributed."""
    metrics = {
        "ece": (CalibrationError(n_bins=10), ("probs", "labels")),
        "nll": (NegativeLogLikelihood(), ("probs", "labels")),
        "brier": (BrierScore(), ("probs", "labels")),
        "entropy": (PredictiveEntropy(), ("probs",)),
        "mi": (MutualInformation(), ("sample_probs",)),
        "auroc": (UncertaintyAUROC(), ("uncertainty", "wrong")),
        "aurac": (AURAC(), ("uncertainty", "correct")),
        "aurc": (AURC(), ("uncertainty", "correct")),
    }
    part = {**part, "wrong": ~part["correct"]}
    n = part["labels"].numel()
    out: dict[str, float | list[float]] = {}
    for name, (metric, fields) in metrics.items():
        for batch in (slice(0, n // 2), slice(n // 2, n)):
            metric.update(*(part[field][batch] for field in fields))
        out[name] = metric.compute().item()
        if name == "ece":
            out["bin_count"] = metric.bins().count.tolist()
    return out


def worker(rank: int, world_size: int, rendezvous: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        everything = data()
        half = slice(0, SPLIT) if rank == 0 else slice(SPLIT, N)
        result = scores({key: value[half] for key, value in everything.items()})
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_one_process_values(tmp_path):
    torch.set_num_threads(1)
    expected = scores(data())
    mp.spawn(worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12), (rank, key)
    # Each half alone gives other values, so the agreement above is the synchronisation's doing.
    half = scores({key: value[:SPLIT] for key, value in data().items()})
    assert all(half[key] != pytest.approx(expected[key], abs=1e-6) for key in ("ece", "nll", "auroc", "aurac"))
