"""What the run commands print: one line of scores per evaluated run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["print_scores"]


def print_scores(payload: dict[str, Any], where: str | Path) -> None:
    """Print a metrics payload's headline scores and where they were written (once, under torchrun)."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    m = payload["metrics"]
    head = f"{payload['method']} on {payload['dataset']} ({payload['split']}, N={payload['n_samples']}): "
    if "token_nll" in m:  # generative data: answer likelihoods (generation metrics come from `bayespeft sample`)
        print(f"{head}answer-token NLL {m['token_nll']:.4f}  perplexity {m['perplexity']:.2f}  -> {where}")
        return
    print(
        f"{head}ACC {m['acc']:.4f}  ECE {m['ece']:.4f}  NLL {m['nll']:.4f}  Brier {m['brier']:.4f}  "
        f"entropy {m['entropy']:.4f}  MI {m['mutual_information']:.4f}  -> {where}"
    )
