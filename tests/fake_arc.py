"""A fake offline ARC-Easy folder in the layout of shared/data, for tests that need a small, known dataset."""

from __future__ import annotations

import json
from pathlib import Path

ARC_FILES = {"train": "ARC-Easy-Train.jsonl", "validation": "ARC-Easy-Dev.jsonl", "test": "ARC-Easy-Test.jsonl"}


def arc_row(i: int) -> dict:
    choices = [{"text": f"option {c} of {i}", "label": c} for c in "ABCD"]
    return {
        "id": f"q{i}",
        "question": {"stem": f"Question number {i}?", "choices": choices},
        "answerKey": "ABCD"[i % 4],
    }


def write_arc(root: Path) -> Path:
    """Eight questions per split under ``root/arc_easy``; returns ``root``."""
    (root / "arc_easy").mkdir(parents=True)
    for n, name in enumerate(ARC_FILES.values()):
        rows = [arc_row(100 * n + i) for i in range(8)]
        (root / "arc_easy" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
