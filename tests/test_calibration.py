"""Post-hoc temperature scaling: the maths, and `bayespeft calibrate` on a trained run."""

from __future__ import annotations

import json

import pytest
import torch

from bayespeft.calibration import apply_temperature, fit_temperature
from bayespeft.cli import main
from bayespeft.metrics import negative_log_likelihood
from bayespeft.predictive import posterior_predictive_from_probs


def overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), predictions softmax(3 z): calibrated at T = 3."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 2, 4, generator=generator)
    labels = torch.multinomial(torch.softmax(logits[:, 0], -1), 1, generator=generator).squeeze(1)
    return torch.softmax(3 * logits, -1), labels


def test_apply_temperature_is_softmax_of_scaled_logits():
    logits = torch.tensor([[[2.0, 0.5, -1.0]]])
    scaled = apply_temperature(torch.softmax(logits, -1), 2.0)
    torch.testing.assert_close(scaled, torch.softmax(logits / 2.0, -1))
    padded = apply_temperature(torch.tensor([[[0.7, 0.3, 0.0]]]), 0.5)
    assert padded[0, 0, 2] == 0 and torch.isclose(padded.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(padded, 0.0)


def test_absent_choices_do_not_break_the_fit():
    """Questions with fewer choices than classes carry probability 0 there (log 0 = -inf)."""
    probs, labels = overconfident(2000, seed=0)
    padded = torch.cat([probs, torch.zeros(2000, 2, 1)], dim=-1)
    assert fit_temperature(padded, labels) == pytest.approx(fit_temperature(probs, labels), rel=1e-6)


def test_fitted_temperature_recovers_the_truth_and_lowers_held_out_nll():
    fit_probs, fit_labels = overconfident(4000, seed=0)
    temperature = fit_temperature(fit_probs, fit_labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    test_probs, test_labels = overconfident(2000, seed=1)
    before = negative_log_likelihood(posterior_predictive_from_probs(test_probs), test_labels)
    after = negative_log_likelihood(
        posterior_predictive_from_probs(apply_temperature(test_probs, temperature)), test_labels
    )
    assert after < before - 0.1


def test_calibrate_command_writes_the_temperature(tmp_path, tiny_llama_dir, shared_data, capsys):
    run = tmp_path / "run"
    common = ["--quiet", "--model", str(tiny_llama_dir), "--dataset", "arc_easy", "--data-dir", str(shared_data)]
    assert (
        main(
            [
                "train",
                "-o",
                str(run),
                *common,
                "--method",
                "mle",
                "--max-train-examples",
                "16",
                "--max-eval-examples",
                "8",
                "--max-steps",
                "4",
                "--batch-size",
                "2",
                "--lr",
                "0.01",
            ]
        )
        == 0
    )
    assert main(["calibrate", "--run-dir", str(run), "--quiet", "--max-fit-examples", "12"]) == 0
    fitted = json.loads((run / "temperature.json").read_text())
    assert fitted["temperature"] > 0 and fitted["num_examples"] == 12 and fitted["fit_split"] == "validation"
    assert fitted["nll_after"] <= fitted["nll_before"] + 1e-9
    assert f"eval.temperature={fitted['temperature']:.6g}" in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate",
                "--run-dir",
                str(run),
                "--quiet",
                "--name",
                "scaled",
                f"eval.temperature={fitted['temperature']}",
            ]
        )
        == 0
    )
    scores = json.loads((run / "eval" / "scaled" / "metrics.json").read_text())["metrics"]
    assert scores["temperature"] == pytest.approx(fitted["temperature"])
    assert main(["calibrate", "--run-dir", str(run), "--quiet", "--fit-split", "train", "--fit-offset", "16"]) == 0
    unseen = json.loads((run / "temperature.json").read_text())
    assert unseen["fit_offset"] == 16 and unseen["num_examples"] == 2251 - 16  # ARC-Easy train minus those trained on
    assert main(["calibrate", "--run-dir", str(run), "--quiet", "--fit-offset", "100000"]) == 2
    assert "--fit-offset" in capsys.readouterr().err
