"""Bad input, every command: exit 2, one ``error:`` line naming the file, field or flag, nothing written.

One table of (command line, message fragments). Each case runs in a workspace that holds a
finished tiny run, a run with a NaN adapter, foreign folders, a file, a repository, broken configs
and data; the hashes of every file in it (and the list of files) must be the same afterwards. The
current directory is the workspace, so ``-o ""`` or ``-o .`` can only hit the workspace.
Add a row for every new command or flag.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from fake_arc import ARC_FILES, write_arc
from safetensors.torch import load_file, save_file

from bayespeft.cli import main
from bayespeft.config import load_config
from bayespeft.training import Trainer


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir, shared_data) -> dict[str, Path]:
    """The workspace every case runs in (see the module docstring), built once."""
    ws = tmp_path_factory.mktemp("workspace")
    data = write_arc(ws / "data")
    latin1 = write_arc(ws / "data_latin1")
    train_file = latin1 / "arc_easy" / ARC_FILES["train"]
    train_file.write_bytes(train_file.read_bytes().replace(b"Question number 3", b"Qu\xe9stion number 3"))
    cut = ws / "data_cut" / "mrpc"
    cut.mkdir(parents=True)
    for name in ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt"):
        lines = (shared_data / "mrpc" / name).read_bytes().splitlines(keepends=True)
        (cut / name).write_bytes(b"".join(lines[: len(lines) // 2]))  # cut at a line boundary

    run = ws / "run"
    config = load_config(
        None,
        [
            f"model.name={tiny_llama_dir}",
            "method.name=mle",
            "data.dataset=arc_easy",
            f"data.data_dir={data}",
            "data.max_length=96",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.checkpoint_every=1",
            "eval.n_samples=2",
            "eval.batch_size=4",
        ],
    )
    Trainer(config, run, progress=False).run_training()
    shutil.rmtree(run / "checkpoints")  # a finished run that keeps no checkpoint
    (run / "eval" / "taken").mkdir(parents=True)
    shutil.copy(run / "metrics.json", run / "eval" / "taken" / "metrics.json")
    nan_run = ws / "nan_run"
    shutil.copytree(run, nan_run)
    weights = nan_run / "adapter" / "adapter_model.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights)

    notes = ws / "notes"  # a folder of the user's, with a config.yaml that makes it look like a run
    notes.mkdir()
    (notes / "config.yaml").write_text("train:\n  lr: 0.1\n")
    (notes / "metrics.json").write_text("{}\n")
    (notes / "diary.txt").write_text("precious")
    (ws / "repo" / ".git").mkdir(parents=True)
    (ws / "repo" / "README").write_text("a checkout")
    (ws / "file.txt").write_text("a file")
    (ws / "readonly").mkdir()
    configs = ws / "configs"
    configs.mkdir()
    (configs / "latin1.yaml").write_bytes(b"train:\n  lr: 0.1\n# caf\xe9\n")
    (configs / "inf.yaml").write_text("train:\n  lr: .inf\n")
    (configs / "sweep_latin1.yaml").write_bytes(b"output_dir: out\n# caf\xe9\n")
    (configs / "tune_latin1.yaml").write_bytes(b"trials: 2\n# caf\xe9\n")
    (ws / "garbage.sqlite").write_bytes(b"not a database at all")
    return {"ws": ws, "run": run, "nan_run": nan_run, "data": data, "tiny": tiny_llama_dir}


def fingerprint(root: Path) -> dict[str, str]:
    """Every file under ``root`` (folders too) with the hash of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(root.rglob("*"))
    }


TRAIN = ["train", "-q", "--model", "{tiny}", "--data-dir", "{data}"]
SMALL = ["--max-train-examples", "4", "--max-eval-examples", "4", "--max-seq-len", "96", "--batch-size", "2"]

# (id, command line, fragments the one error line must hold)
CASES: list[tuple[str, list[str], list[str]]] = [
    # ---- train: output directory
    ("train-empty-o", [*TRAIN, "-o", ""], ["--output-dir", "empty path"]),
    ("train-empty-o-overwrite", [*TRAIN, "-o", "", "--overwrite"], ["--output-dir", "empty path"]),
    ("train-overwrite-cwd", [*TRAIN, "-o", ".", "--overwrite"], ["--overwrite refused", "current directory"]),
    ("train-overwrite-parent", [*TRAIN, "-o", "..", "--overwrite"], ["--overwrite refused", "current directory"]),
    ("train-overwrite-repo", [*TRAIN, "-o", "{ws}/repo", "--overwrite"], ["repository root"]),
    ("train-overwrite-foreign", [*TRAIN, "-o", "{ws}/notes", "--overwrite"], ["diary.txt", "did not write"]),
    ("train-overwrite-not-a-run", [*TRAIN, "-o", "{ws}/configs", "--overwrite"], ["configs", "did not write"]),
    ("train-existing", [*TRAIN, "-o", "{run}"], ["{run}", "--overwrite"]),
    ("train-o-is-file", [*TRAIN, "-o", "{ws}/file.txt"], ["file.txt", "not a directory"]),
    ("train-o-under-file", [*TRAIN, "-o", "{ws}/file.txt/run"], ["file.txt", "is a file, not a folder"]),
    ("train-o-readonly", [*TRAIN, "-o", "{ws}/readonly/run"], ["--output-dir", "cannot write"]),
    # ---- train: resume
    ("train-resume-nothing", [*TRAIN, "-o", "{ws}/repo", "--resume"], ["repo", "nothing to resume"]),
    ("train-resume-lookalike", [*TRAIN, "-o", "{ws}/notes", "--resume"], ["notes", "no checkpoint"]),
    ("train-resume-overwrite", [*TRAIN, "-o", "{run}", "--resume", "--overwrite"], ["--resume", "--overwrite"]),
    ("train-resume-config", ["train", "-o", "{run}", "--resume", "-c", "{ws}/configs/inf.yaml"], ["--config"]),
    ("train-resume-finished", ["train", "-q", "-o", "{run}", "--resume"], ["has finished", "--overwrite"]),
    ("train-stop-after-0", [*TRAIN, "-o", "{ws}/new", "--stop-after-steps", "0"], ["--stop-after-steps"]),
    # ---- train: config
    ("train-config-latin1", [*TRAIN, "-o", "{ws}/new", "-c", "{ws}/configs/latin1.yaml"], ["latin1.yaml:3", "UTF-8"]),
    ("train-config-inf", [*TRAIN, "-o", "{ws}/new", "-c", "{ws}/configs/inf.yaml"], ["train.lr", "finite"]),
    ("train-config-missing", [*TRAIN, "-o", "{ws}/new", "-c", "{ws}/none.yaml"], ["none.yaml", "not found"]),
    ("train-lr-yaml-inf", [*TRAIN, "-o", "{ws}/new", "train.lr=.inf"], ["train.lr", "finite"]),
    ("train-lr-yaml-nan", [*TRAIN, "-o", "{ws}/new", "train.lr=.nan"], ["train.lr", "finite"]),
    ("train-lr-flag-inf", [*TRAIN, "-o", "{ws}/new", "--lr", "inf"], ["train.lr", "finite"]),
    ("train-lr-flag-nan", [*TRAIN, "-o", "{ws}/new", "--lr", "nan"], ["train.lr", "finite"]),
    ("train-lr-huge", [*TRAIN, "-o", "{ws}/new", "--lr", "1e40"], ["train.lr", "float32"]),
    ("train-beta-inf", [*TRAIN, "-o", "{ws}/new", "method.beta=.inf"], ["method.beta", "finite"]),
    ("train-seed-negative", [*TRAIN, "-o", "{ws}/new", "--seed", "-1"], ["train.seed", "2**32"]),
    ("train-seed-2-32", [*TRAIN, "-o", "{ws}/new", "--seed", "4294967296"], ["train.seed", "2**32"]),
    ("train-eval-seed", [*TRAIN, "-o", "{ws}/new", "eval.seed=-3"], ["eval.seed"]),
    ("train-max-train-0", [*TRAIN, "-o", "{ws}/new", "--max-train-examples", "0"], ["data.max_train_examples"]),
    ("train-method", [*TRAIN, "-o", "{ws}/new", "--method", "nope"], ["method.name", "nope"]),
    ("train-stray", [*TRAIN, "-o", "{ws}/new", "stray"], ["stray", "key=value"]),
    ("train-unknown-key", [*TRAIN, "-o", "{ws}/new", "train.nope=1"], ["train.nope"]),
    # ---- train: data
    (
        "train-data-latin1",
        ["train", "-q", "--model", "{tiny}", "--data-dir", "{ws}/data_latin1", "-o", "{ws}/new", *SMALL],
        ["ARC-Easy-Train.jsonl:4", "UTF-8"],
    ),
    (
        "train-data-cut",
        ["train", "-q", "--model", "minilm-l6", "--dataset", "mrpc", "--data-dir", "{ws}/data_cut", "-o", "{ws}/new"],
        ["msr_paraphrase_train.txt", "4076"],
    ),
    (
        "train-encoder-unknown-dataset",
        ["train", "-q", "--model", "minilm-l6", "--dataset", "nope", "--data-dir", "{data}", "-o", "{ws}/new"],
        ["data.dataset", "unknown dataset 'nope'"],
    ),
    ("train-data-dir-missing", [*TRAIN[:-2], "--data-dir", "{ws}/none", "-o", "{ws}/new"], ["none"]),
    # ---- evaluate
    ("evaluate-empty-run-dir", ["evaluate", "--run-dir", ""], ["--run-dir", "empty path"]),
    ("evaluate-not-a-run", ["evaluate", "--run-dir", "{ws}/notes"], ["not a finished bayespeft run"]),
    ("evaluate-name-dotdot", ["evaluate", "--run-dir", "{run}", "--name", ".."], ["--name", "plain name"]),
    ("evaluate-name-dotdot-overwrite", ["evaluate", "--run-dir", "{run}", "--name", "..", "--overwrite"], ["--name"]),
    ("evaluate-name-escape", ["evaluate", "--run-dir", "{run}", "--name", "../../x"], ["--name", "plain name"]),
    ("evaluate-missing-checkpoint", ["evaluate", "--run-dir", "{run}", "--checkpoint", "999"], ["--checkpoint", "999"]),
    ("train-eval-every-negative", ["train", "-o", "{ws}/new", "train.eval_every=-1"], ["train.eval_every", ">= 0"]),
    (
        "train-early-stopping-without-eval",
        ["train", "-o", "{ws}/new", "train.early_stopping_patience=2"],
        ["train.early_stopping_patience", "train.eval_every"],
    ),
    ("evaluate-name-slash", ["evaluate", "--run-dir", "{run}", "--name", "a/b"], ["--name"]),
    ("evaluate-name-empty", ["evaluate", "--run-dir", "{run}", "--name", ""], ["--name"]),
    ("evaluate-name-hidden", ["evaluate", "--run-dir", "{run}", "--name", ".x"], ["--name"]),
    ("evaluate-name-taken", ["evaluate", "--run-dir", "{run}", "--name", "taken"], ["taken", "--overwrite"]),
    ("evaluate-config", ["evaluate", "--run-dir", "{run}", "-c", "{ws}/configs/inf.yaml"], ["--config"]),
    ("evaluate-n-samples", ["evaluate", "--run-dir", "{run}", "--n-samples", "-1"], ["eval.n_samples"]),
    ("evaluate-temperature", ["evaluate", "--run-dir", "{run}", "eval.temperature=.inf"], ["eval.temperature"]),
    ("evaluate-seed", ["evaluate", "--run-dir", "{run}", "--seed", "4294967296"], ["train.seed"]),
    ("evaluate-nan-adapter", ["evaluate", "-q", "--run-dir", "{nan_run}", "--name", "x"], ["adapter_model", "NaN"]),
    # ---- calibrate
    (
        "calibrate-max-fit-negative",
        ["calibrate", "--run-dir", "{run}", "--max-fit-examples", "-1"],
        ["--max-fit-examples"],
    ),
    ("calibrate-max-fit-0", ["calibrate", "--run-dir", "{run}", "--max-fit-examples", "0"], ["--max-fit-examples"]),
    ("calibrate-fit-offset", ["calibrate", "--run-dir", "{run}", "--fit-offset", "-1"], ["--fit-offset"]),
    ("calibrate-fit-offset-all", ["calibrate", "--run-dir", "{run}", "--fit-offset", "100"], ["--fit-offset", "100"]),
    ("calibrate-fit-split", ["calibrate", "--run-dir", "{run}", "--fit-split", "nope"], ["--fit-split", "nope"]),
    ("calibrate-empty-run-dir", ["calibrate", "--run-dir", ""], ["--run-dir", "empty path"]),
    ("calibrate-nan-adapter", ["calibrate", "-q", "--run-dir", "{nan_run}"], ["adapter_model", "NaN"]),
    # ---- ood
    ("ood-no-datasets", ["ood", "--run-dir", "{run}", "--datasets", " , "], ["--datasets"]),
    ("ood-not-a-run", ["ood", "--run-dir", "{ws}/notes", "--datasets", "obqa"], ["not a finished bayespeft run"]),
    ("ood-unknown-dataset", ["ood", "--run-dir", "{run}", "--datasets", "../../x"], ["--datasets", "../../x"]),
    ("ood-empty-run-dir", ["ood", "--run-dir", "", "--datasets", "obqa"], ["--run-dir", "empty path"]),
    # ---- compare
    ("compare-empty-o", ["compare", "--methods", "mle", "--datasets", "arc_easy", "-o", ""], ["--output-dir"]),
    ("compare-no-methods", ["compare", "--methods", ",", "--datasets", "arc_easy", "-o", "{ws}/cmp"], ["--methods"]),
    (
        "compare-seeds",
        ["compare", "--methods", "mle", "--datasets", "arc_easy", "--seeds", "a", "-o", "c"],
        ["--seeds"],
    ),
    (
        "compare-seed-range",
        ["compare", "--methods", "mle", "--datasets", "arc_easy", "--seeds", "-1", "-o", "c"],
        ["seed"],
    ),
    ("compare-o-file", ["compare", "--methods", "mle", "--datasets", "arc_easy", "-o", "{ws}/file.txt"], ["file.txt"]),
    (
        "compare-o-under-file",
        ["compare", "--methods", "mle", "--datasets", "arc_easy", "-o", "{ws}/file.txt/c"],
        ["is a file, not a folder"],
    ),
    ("compare-unknown-method", ["compare", "--methods", "nope", "--datasets", "arc_easy", "-o", "c"], ["nope"]),
    (
        "compare-metrics",
        ["compare", "--methods", "mle", "--datasets", "arc_easy", "--metrics", ",", "-o", "c"],
        ["--metrics"],
    ),
    # ---- sweep
    ("sweep-no-output", ["sweep", "--grid", "method.beta=0.1,0.2"], ["no output directory"]),
    ("sweep-empty-o", ["sweep", "--grid", "method.beta=0.1", "-o", ""], ["--output-dir", "empty path"]),
    ("sweep-seeds", ["sweep", "--seeds", "x", "-o", "{ws}/sw"], ["--seeds"]),
    ("sweep-spec-latin1", ["sweep", "{ws}/configs/sweep_latin1.yaml"], ["sweep_latin1.yaml:2", "UTF-8"]),
    ("sweep-spec-missing", ["sweep", "{ws}/none.yaml"], ["none.yaml", "not found"]),
    ("sweep-o-file", ["sweep", "--grid", "method.beta=0.1", "-o", "{ws}/file.txt"], ["file.txt"]),
    ("sweep-grid-inf", ["sweep", "--grid", "train.lr=.inf,0.1", "-o", "{ws}/sw"], ["train.lr", "finite"]),
    ("sweep-seed-range", ["sweep", "--seeds", "4294967296", "-o", "{ws}/sw"], ["train.seed"]),
    # ---- tune
    ("tune-no-space", ["tune", "--objectives", "acc:max", "-o", "{ws}/tn"], ["search space"]),
    (
        "tune-trials-0",
        ["tune", "-s", "train.lr=log:1e-4:1e-2", "--objectives", "acc:max", "-n", "0", "-o", "t"],
        ["--trials"],
    ),
    (
        "tune-seed",
        ["tune", "-s", "train.lr=log:1e-4:1e-2", "--objectives", "acc:max", "--seed", "-1", "-o", "t"],
        ["--seed"],
    ),
    (
        "tune-validation-seed",
        [
            "tune",
            "-s",
            "train.lr=log:1e-4:1e-2",
            "--objectives",
            "acc:max",
            "--validation-seed",
            "4294967296",
            "-o",
            "t",
        ],
        ["--validation-seed"],
    ),
    ("tune-empty-o", ["tune", "-o", ""], ["--output-dir", "empty path"]),
    ("tune-spec-latin1", ["tune", "{ws}/configs/tune_latin1.yaml"], ["tune_latin1.yaml:2", "UTF-8"]),
    (
        "tune-o-file",
        ["tune", "-s", "train.lr=log:1e-4:1e-2", "--objectives", "acc:max", "-o", "{ws}/file.txt"],
        ["file.txt"],
    ),
    # ---- sample
    ("sample-empty-store", ["sample", "--store", ""], ["--store", "empty path"]),
    ("sample-max-examples", ["sample", "--store", "{ws}/s.sqlite", "--max-examples", "0"], ["--max-examples"]),
    ("sample-n-samples", ["sample", "--store", "{ws}/s.sqlite", "--n-samples", "3"], ["--n-samples"]),
    ("sample-generation-seed", ["sample", "--store", "{ws}/s.sqlite", "generation.seed=-1"], ["generation.seed"]),
    ("sample-generation-key", ["sample", "--store", "{ws}/s.sqlite", "generation.nope=1"], ["generation.nope"]),
    ("sample-not-open-ended", ["sample", "--store", "{ws}/s.sqlite", "--run-dir", "{run}"], ["not an open-ended"]),
    ("sample-store-under-file", ["sample", "--store", "{ws}/file.txt/s.sqlite"], ["is a file, not a folder"]),
    # ---- sample-store
    ("store-merge-empty", ["sample-store", "merge", "--store", "", "--shards", "2"], ["--store", "empty path"]),
    ("store-merge-shards", ["sample-store", "merge", "--store", "{ws}/m.sqlite", "--shards", "0"], ["--shards"]),
    (
        "store-export-missing",
        ["sample-store", "export", "--store", "{ws}/none.sqlite", "--out", "x.jsonl"],
        ["none.sqlite"],
    ),
    ("store-export-format", ["sample-store", "export", "--store", "{ws}/garbage.sqlite", "--out", "x.txt"], ["--out"]),
    ("store-export-empty-out", ["sample-store", "export", "--store", "{ws}/garbage.sqlite", "--out", ""], ["--out"]),
    ("store-info-missing", ["sample-store", "info", "--store", "{ws}/none.sqlite"], ["none.sqlite"]),
    ("store-info-garbage", ["sample-store", "info", "--store", "{ws}/garbage.sqlite"], ["garbage.sqlite"]),
    (
        "store-salvage-missing",
        ["sample-store", "salvage", "--store", "{ws}/none.sqlite", "--out", "n.sqlite"],
        ["none"],
    ),
    # ---- score
    ("score-missing-store", ["score", "--store", "{ws}/none.sqlite", "-o", "{ws}/sc"], ["none.sqlite"]),
    ("score-n-boot", ["score", "--store", "{ws}/garbage.sqlite", "--n-boot", "0", "-o", "sc"], ["--n-boot"]),
    (
        "score-confidence",
        ["score", "--store", "{ws}/garbage.sqlite", "--confidence", "1.5", "-o", "sc"],
        ["--confidence"],
    ),
    ("score-seed", ["score", "--store", "{ws}/garbage.sqlite", "--seed", "-1", "-o", "sc"], ["--seed"]),
    (
        "score-store-twice",
        ["score", "--store", "{ws}/garbage.sqlite", "--store", "{ws}/garbage.sqlite", "-o", "sc"],
        ["twice"],
    ),
    ("score-empty-o", ["score", "--store", "{ws}/garbage.sqlite", "-o", ""], ["--output-dir", "empty path"]),
    ("score-o-file", ["score", "--store", "{ws}/garbage.sqlite", "-o", "{ws}/file.txt"], ["--output-dir", "file.txt"]),
    # ---- report
    ("report-missing", ["report", "{ws}/none", "-o", "{ws}/rep"], ["none"]),
    ("report-empty-o", ["report", "{run}/metrics.json", "-o", ""], ["--output-dir", "empty path"]),
    ("report-n-bins", ["report", "{run}/metrics.json", "-o", "{ws}/rep", "--n-bins", "0"], ["--n-bins"]),
    ("report-metrics", ["report", "{run}/metrics.json", "-o", "{ws}/rep", "--metrics", ","], ["--metrics"]),
    ("report-group-by", ["report", "{run}/metrics.json", "-o", "{ws}/rep", "--group-by", "nope"], ["nope"]),
    ("report-o-file", ["report", "{run}/metrics.json", "-o", "{ws}/file.txt"], ["file.txt"]),
    ("report-o-under-file", ["report", "{run}/metrics.json", "-o", "{ws}/file.txt/rep"], ["is a file, not a folder"]),
]


@pytest.mark.parametrize(("argv", "fragments"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input(world, capsys, monkeypatch, argv, fragments):
    names = {key: str(value) for key, value in world.items()}
    argv = [item.format(**names) for item in argv]
    fragments = [item.format(**names) for item in fragments]
    readonly = str(world["ws"] / "readonly")
    real_access = os.access
    monkeypatch.setattr(  # a read-only file system there: tests run as root, where chmod cannot deny access
        "bayespeft.rundir.os.access", lambda path, mode: not str(path).startswith(readonly) and real_access(path, mode)
    )
    monkeypatch.chdir(world["ws"])
    before = fingerprint(world["ws"])
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert fingerprint(world["ws"]) == before


def test_the_table_covers_every_command():
    commands = {case[1][0] for case in CASES}
    assert commands == {
        "train",
        "evaluate",
        "calibrate",
        "ood",
        "compare",
        "sweep",
        "tune",
        "sample",
        "sample-store",
        "score",
        "report",
    }
    assert len(CASES) >= 60 and len({case[0] for case in CASES}) == len(CASES)
