"""`bayespeft ood`: a trained run evaluated on shifted datasets, with OOD-detection AUROCs."""

from __future__ import annotations

import json

from bayespeft.cli import main
from bayespeft.workflows.ood import parse_dataset_list


def test_dataset_list_defaults_to_validation_and_mmlu_test():
    assert parse_dataset_list("arc_challenge, mmlu:college_physics,obqa@test") == [
        ("arc_challenge", "validation"),
        ("mmlu:college_physics", "test"),
        ("obqa", "test"),
    ]


def test_ood_protocol_on_a_tiny_run(tmp_path, tiny_llama_dir, shared_data, capsys):
    run = tmp_path / "run"
    common = ["--quiet", "--model", str(tiny_llama_dir), "--data-dir", str(shared_data)]
    assert (
        main(
            [
                "train",
                "-o",
                str(run),
                *common,
                "--dataset",
                "obqa",
                "--method",
                "blob",
                "--max-steps",
                "3",
                "--max-train-examples",
                "12",
                "--max-eval-examples",
                "6",
                "--batch-size",
                "2",
                "--n-samples",
                "2",
                "--kl-period",
                "epoch",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "ood",
                "--run-dir",
                str(run),
                "--quiet",
                "--datasets",
                "arc_challenge,mmlu:college_physics",
                "--max-eval-examples",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| obqa | validation | in-distribution |" in out and "| arc_challenge | validation | OOD |" in out
    shifted = json.loads((run / "eval" / "ood_arc_challenge_validation_n2" / "metrics.json").read_text())
    assert set(shifted["ood_detection"]) == {"auroc_entropy", "auroc_max_prob", "auroc_mutual_information"}
    assert all(0 <= v <= 1 for v in shifted["ood_detection"].values())
    summary = json.loads((run / "eval" / "ood_summary_n2" / "summary.json").read_text())
    assert [r["dataset"] for r in summary["rows"]] == ["obqa", "arc_challenge", "mmlu:college_physics"]
    # max-eval-examples differs from the run's, so the in-distribution split was evaluated again
    assert (run / "eval" / "ood_in_obqa_validation_n2" / "predictions.jsonl").is_file()
    assert main(["ood", "--run-dir", str(run), "--quiet", "--datasets", "arc_challenge"]) == 2  # results exist
