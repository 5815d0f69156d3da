"""`bayespeft sample` and `bayespeft sample-store` through the CLI: rows, resume, refusal, shards, export, salvage,
bad input, and a real kill of the command followed by a resume."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bayespeft.cli import main
from bayespeft.sample_store import SampleRow, SampleStore

SAMPLES = 3
GENERATION = ["generation.n_samples=3", "generation.max_new_tokens=4", "generation.prompts_per_batch=2"]
SAMPLED = ["generation.strategy=sample", "generation.temperature=1.5"]  # decoding noise keyed by example index


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory, tiny_llama_dir, shared_data) -> Path:
    """A BLoB run of the tiny Llama, trained for 2 steps on TriviaQA."""
    run = tmp_path_factory.mktemp("runs") / "blob"
    argv = ["train", "-q", "-o", str(run), "--model", str(tiny_llama_dir), "--method", "blob", "--dataset", "triviaqa"]
    argv += ["--data-dir", str(shared_data), "--max-train-examples", "8", "--max-eval-examples", "2"]
    assert main([*argv, "--max-steps", "2", "--batch-size", "2", "--n-samples", "2", "--checkpoint-every", "2"]) == 0
    return run


def sample_argv(run: Path, store: Path, *extra: str, examples: int = 6) -> list[str]:
    """The argument list of a `bayespeft sample` call on ``run`` (for in-process and subprocess calls)."""
    argv = ["sample", "-q", "--run-dir", str(run), "--store", str(store), "--max-examples", str(examples)]
    return [*argv, *GENERATION, *extra]


def rows_of(path: Path) -> list[SampleRow]:
    with SampleStore.open_existing(path) as store:
        return list(store.rows())


def assert_same_samples(rows: list[SampleRow], reference: list[SampleRow]) -> None:
    """Same keys, example indices, prompts, texts and tokens; log-likelihoods equal up to float noise."""
    assert [(r.key, r.example_index, r.prompt, r.text, r.token_ids) for r in rows] == [
        (r.key, r.example_index, r.prompt, r.text, r.token_ids) for r in reference
    ]
    torch.testing.assert_close(
        torch.tensor([r.log_likelihood for r in rows], dtype=torch.float64),
        torch.tensor([r.log_likelihood for r in reference], dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )


def one_error_line(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]  # past load bars
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def row_count(path: Path) -> int:
    if not path.exists():
        return 0
    connection = sqlite3.connect(path, timeout=30)
    try:
        return connection.execute("SELECT count(*) FROM samples").fetchone()[0]
    except sqlite3.OperationalError:  # created but its tables not committed yet
        return 0
    finally:
        connection.close()


# ------------------------------------------------------------------------------------- the store


def test_every_sample_is_stored_and_a_rerun_resumes(blob_run, tmp_path, capsys):
    store = tmp_path / "gens.sqlite"
    assert main(sample_argv(blob_run, store)) == 0
    assert "6 examples in shard 0/1 (0 already complete, 6 sampled), 3 samples each; 18 samples" in (
        capsys.readouterr().out
    )
    rows = rows_of(store)
    assert len(rows) == len({r.key for r in rows}) == 6 * SAMPLES
    assert [(r.example_index, r.sample_index) for r in rows] == [(i, s) for i in range(6) for s in range(SAMPLES)]
    assert {(r.method, r.seed) for r in rows} == {("blob", 0)}
    assert all(r.prompt.startswith("Question: ") and r.prompt.endswith("\nAnswer:") for r in rows)
    assert all(len(r.token_ids) == len(r.token_logprobs) >= 1 and r.finish_reason in ("eos", "length") for r in rows)
    assert all(r.log_likelihood == pytest.approx(sum(r.token_logprobs)) for r in rows)

    assert main(sample_argv(blob_run, store)) == 0
    assert "(6 already complete, 0 sampled)" in capsys.readouterr().out
    assert rows_of(store) == rows

    connection = sqlite3.connect(store)  # lose the last batch, as a crash before its commit would
    with connection:
        connection.execute("DELETE FROM samples WHERE example_index >= 4")
    connection.close()
    assert main(sample_argv(blob_run, store)) == 0
    assert "(4 already complete, 2 sampled)" in capsys.readouterr().out
    assert_same_samples(rows_of(store), rows)

    assert main(sample_argv(blob_run, store, examples=8)) == 0  # a larger limit extends the same store
    extended = rows_of(store)
    assert len(extended) == 8 * SAMPLES
    assert_same_samples(extended[: 6 * SAMPLES], rows)


def test_a_store_of_another_configuration_is_refused_and_nothing_written(blob_run, tmp_path, capsys):
    store = tmp_path / "gens.sqlite"
    assert main(sample_argv(blob_run, store)) == 0
    before = snapshot(tmp_path)
    one_error_line(
        capsys,
        [*sample_argv(blob_run, store), "generation.max_new_tokens=5"],
        str(store),
        "decoding.max_new_tokens is 4 in the store, 5 in this run",
    )
    one_error_line(capsys, [*sample_argv(blob_run, store), *SAMPLED], "decoding.strategy")
    one_error_line(capsys, [*sample_argv(blob_run, store), "method.beta=0.3"], "extra.method_config.beta")
    assert snapshot(tmp_path) == before


def test_shards_merged_equal_one_unsharded_run(blob_run, tmp_path, capsys):
    whole, sharded = tmp_path / "whole.sqlite", tmp_path / "sharded.sqlite"
    assert main([*sample_argv(blob_run, whole, examples=7), *SAMPLED]) == 0
    for shard in ("0/2", "1/2"):
        assert main([*sample_argv(blob_run, sharded, examples=7), *SAMPLED, "--shard", shard]) == 0
    assert "bayespeft sample-store merge --store" in capsys.readouterr().out
    parts = [tmp_path / f"sharded.shard-{i}-of-2.sqlite" for i in range(2)]
    assert [sorted({r.example_index for r in rows_of(p)}) for p in parts] == [[0, 2, 4, 6], [1, 3, 5]]
    assert not sharded.exists()
    assert main(["sample-store", "merge", "--store", str(sharded), "--shards", "2"]) == 0
    assert "merged 2 stores: 21 samples" in capsys.readouterr().out
    reference = rows_of(whole)
    assert len({tuple(r.token_ids) for r in reference}) > SAMPLES  # sampled decoding: the samples differ
    assert_same_samples(rows_of(sharded), reference)
    assert main(["sample-store", "merge", "--store", str(sharded), "--shards", "2"]) == 0  # merging again: harmless
    assert_same_samples(rows_of(sharded), reference)


def test_export_to_jsonl_and_parquet_and_info(blob_run, tmp_path, capsys):
    import pyarrow.parquet as pq

    store = tmp_path / "gens.sqlite"
    assert main(sample_argv(blob_run, store, examples=4)) == 0
    rows = rows_of(store)
    assert main(["sample-store", "export", "--store", str(store), "--out", str(tmp_path / "gens.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "gens.jsonl").read_text().splitlines()]
    assert [(r["example_uid"], r["sample_index"], r["text"]) for r in records] == [
        (r.example_uid, r.sample_index, r.text) for r in rows
    ]
    out = tmp_path / "gens.data"
    assert main(["sample-store", "export", "--store", str(store), "--out", str(out), "--format", "parquet"]) == 0
    assert pq.read_table(out).to_pylist() == records
    one_error_line(
        capsys, ["sample-store", "export", "--store", str(store), "--out", str(tmp_path / "x.txt")], "--format"
    )
    capsys.readouterr()
    assert main(["sample-store", "info", "--store", str(store)]) == 0
    info = capsys.readouterr().out
    assert "shard 0/1, 12 samples, 4 complete examples, 0 partial" in info and "dataset: triviaqa" in info


def test_zero_shot_from_a_config_file_resumes_with_the_same_initial_adapter(tiny_llama_dir, shared_data, tmp_path):
    config = tmp_path / "zero_shot.yaml"
    config.write_text(
        f"model: {{name: '{tiny_llama_dir}'}}\nmethod: {{name: blob}}\n"
        f"data: {{dataset: triviaqa, data_dir: '{shared_data}'}}\ntrain: {{seed: 3}}\n"
    )
    store = tmp_path / "zero.sqlite"
    argv = ["sample", "-q", "-c", str(config), "--store", str(store), "--max-examples", "3", *GENERATION]
    assert main(argv) == 0
    first = rows_of(store)
    with SampleStore.open_existing(store) as opened:
        assert opened.fingerprint["adapter_sha256"] and opened.fingerprint["extra"]["data_seed"] == 3
    store.rename(tmp_path / "first.sqlite")
    assert main(argv) == 0  # a fresh process would initialise the adapter alike: the same samples
    assert rows_of(store) == first


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["generation.n_samples=0"], ["generation.n_samples", "must be an integer >= 1"]),
        (["generation.max_new_tokens=0"], ["generation.max_new_tokens", "must be an integer >= 1"]),
        (["generation.strategy=nucleus"], ["generation.strategy"]),
        (["generation.colour=red"], ["generation.colour"]),
        (["--shard", "2/2"], ["--shard", "2/2"]),
        (["--max-examples", "0"], ["--max-examples"]),
        (["--n-samples", "5"], ["--n-samples", "generation.n_samples=S"]),
        (["--dataset", "arc_easy"], ["data.dataset", "not an open-ended dataset"]),
    ],
)
def test_bad_settings_give_one_error_line_and_no_store(blob_run, tmp_path, capsys, extra, needles):
    store = tmp_path / "gens.sqlite"
    one_error_line(capsys, [*sample_argv(blob_run, store), *extra], *needles)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_prompt_is_refused_naming_the_file_and_line(tiny_llama_dir, tmp_path, capsys):
    folder = tmp_path / "data" / "dialogsum"
    folder.mkdir(parents=True)
    rows = [{"fname": "dev_0", "dialogue": "#Person1#: Hi.", "summary": "They greet."}]
    rows.append({"fname": "dev_1", "dialogue": "   ", "summary": "Nothing."})
    (folder / "dialogsum.dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "gens.sqlite"
    argv = ["sample", "-q", "--model", str(tiny_llama_dir), "--method", "mle", "--dataset", "dialogsum"]
    argv += ["--data-dir", str(tmp_path / "data"), "--split", "validation", "--store", str(store), *GENERATION]
    one_error_line(capsys, argv, "dialogsum.dev.jsonl:2", "'dialogue' is empty")
    assert not store.exists()


def test_a_corrupt_store_is_refused_and_salvage_keeps_its_good_rows(blob_run, tmp_path, capsys):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 500)
    one_error_line(capsys, sample_argv(blob_run, garbage), str(garbage), "corrupt sample store", "salvage")
    assert garbage.read_bytes() == b"not a database" * 500

    store = tmp_path / "gens.sqlite"
    assert main(sample_argv(blob_run, store)) == 0
    originals = rows_of(store)
    with SampleStore.open_existing(store) as opened:  # filler rows of other examples: a store of many pages
        opened.write(
            [SampleRow(f"filler-{i}", 0, "blob", 0, 100 + i, "x" * 1500, "y", (1,), -1.0, (-1.0,)) for i in range(60)]
        )
    data = bytearray(store.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    page = data.index(originals[0].prompt.encode()) // page_size  # the page holding the first example's rows
    assert 4 < page < len(data) // page_size
    data[page * page_size : (page + 1) * page_size] = random.Random(0).randbytes(page_size)
    store.write_bytes(bytes(data))

    one_error_line(capsys, sample_argv(blob_run, store), str(store), "corrupt sample store")
    rescued = tmp_path / "rescued.sqlite"
    assert main(["sample-store", "salvage", "--store", str(store), "--out", str(rescued)]) == 0
    assert "unreadable" in capsys.readouterr().out
    kept = rows_of(rescued)
    assert 0 < len([r for r in kept if not r.example_uid.startswith("filler")]) < len(originals)
    assert all(row in originals for row in kept if not row.example_uid.startswith("filler"))
    assert main(sample_argv(blob_run, rescued)) == 0  # resuming regenerates what was lost
    assert_same_samples([r for r in rows_of(rescued) if not r.example_uid.startswith("filler")], originals)


# ------------------------------------------------------------------------------------- a real kill


def test_sigkill_of_the_command_then_resume_loses_and_duplicates_nothing(blob_run, tmp_path):
    examples, total = 40, 40 * SAMPLES
    slow = ["generation.max_new_tokens=16", "generation.prompts_per_batch=1", *SAMPLED]
    store = tmp_path / "killed.sqlite"
    argv = [*sample_argv(blob_run, store, examples=examples), *slow]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "bayespeft.cli", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    try:
        while row_count(store) == 0:
            assert process.poll() is None, f"sampling ended before the kill: {process.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no samples written in time"
            time.sleep(0.005)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    after_kill = rows_of(store)
    assert 0 < len(after_kill) < total and len(after_kill) % SAMPLES == 0  # whole examples only
    assert main(argv) == 0
    resumed = rows_of(store)
    assert len(resumed) == len({r.key for r in resumed}) == total
    assert all(row in resumed for row in after_kill)
    uninterrupted = tmp_path / "uninterrupted.sqlite"
    assert main([*sample_argv(blob_run, uninterrupted, examples=examples), *slow]) == 0
    assert_same_samples(resumed, rows_of(uninterrupted))


def test_two_accelerate_processes_sample_their_shards_and_merge_them(blob_run, tmp_path):
    """Under torchrun (2 CPU processes, gloo) each process writes its shard file; the main process merges them."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    store = tmp_path / "parallel.sqlite"
    argv = [*sample_argv(blob_run, store, examples=5), *SAMPLED]
    subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "bayespeft.cli", *argv], check=True, env=env, timeout=600)
    parts = [tmp_path / f"parallel.shard-{i}-of-2.sqlite" for i in range(2)]
    assert [sorted({r.example_index for r in rows_of(p)}) for p in parts] == [[0, 2, 4], [1, 3]]
    single = tmp_path / "single.sqlite"
    assert main([*sample_argv(blob_run, single, examples=5), *SAMPLED]) == 0
    assert_same_samples(rows_of(store), rows_of(single))
