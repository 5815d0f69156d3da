"""The generation store: fingerprints, duplicates, resume, shards, merge, export, corruption, and a real kill."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bayespeft.errors import ConfigError
from bayespeft.sample_store import (
    CorruptStoreError,
    Generation,
    SampleRow,
    SampleStore,
    SampleStoreError,
    Shard,
    adapter_sha256,
    generation_fingerprint,
    merge,
    resolve_shard,
    run_sampling,
    salvage,
    shard_paths,
)

SAMPLES = 3


@dataclass(frozen=True)
class Example:
    uid: str
    prompt: str


def make_examples(n: int) -> list[Example]:
    return [Example(uid=f"ex-{i:04d}", prompt=f"prompt for example {i:04d}: " + "context " * 8) for i in range(n)]


def fake_generation(example: Example, sample_index: int) -> Generation:
    """A deterministic stand-in for a model sample (hashlib, not hash(): equal in every process)."""
    digest = hashlib.sha256(f"{example.uid}/{sample_index}".encode()).digest()
    token_ids = [int(b) for b in digest[: 4 + digest[0] % 12]]
    token_logprobs = [-(b + 1) / 64 for b in token_ids]
    return Generation(
        example_uid=example.uid,
        sample_index=sample_index,
        prompt=example.prompt,
        text=f"answer {sample_index} to {example.uid}: " + " ".join(map(str, token_ids)),
        token_ids=token_ids,
        log_likelihood=sum(token_logprobs),
        token_logprobs=token_logprobs,
        finish_reason="eos" if digest[1] % 2 else "length",
    )


def stored_row(generation: Generation, example_index: int) -> SampleRow:
    """``generation`` as the store keeps it under the test fingerprint's method and seed."""
    return SampleRow(
        example_uid=generation.example_uid,
        sample_index=generation.sample_index,
        method="blob",
        seed=7,
        example_index=example_index,
        prompt=generation.prompt,
        text=generation.text,
        token_ids=tuple(generation.token_ids),
        log_likelihood=generation.log_likelihood,
        token_logprobs=tuple(generation.token_logprobs),
        finish_reason=generation.finish_reason,
    )


def produce(batch: list[Example]) -> list[Generation]:
    return [fake_generation(example, s) for example in batch for s in range(SAMPLES)]


def fingerprint(**changes) -> dict:
    decoding = {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 16, **changes.pop("decoding", {})}
    base = {
        "model": "tiny",
        "adapter": None,
        "method": "blob",
        "seed": 7,
        "samples_per_example": SAMPLES,
        "dataset": "arc-e",
        "split": "test",
        "decoding": decoding,
    }
    return generation_fingerprint(**{**base, **changes})


def sampled_store(path: Path, examples: list[Example], shard: Shard | None = None) -> SampleStore:
    store = SampleStore.open(path, fingerprint(), shard)
    run_sampling(store, examples, produce, batch_size=4, progress=False)
    return store


def reference_rows(tmp_path: Path, examples: list[Example]) -> list[SampleRow]:
    with sampled_store(tmp_path / "reference.sqlite", examples) as store:
        return list(store.rows())


def test_fingerprint_names_adapter_by_weights_hash(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    fp = fingerprint(adapter=adapter)
    assert fp["adapter_sha256"] == hashlib.sha256(b"weights").hexdigest() == adapter_sha256(adapter)
    assert str(adapter) not in json.dumps(fp)


def test_other_configuration_is_refused_and_nothing_written(tmp_path):
    path = tmp_path / "gens.sqlite"
    with sampled_store(path, make_examples(5)):
        pass
    before = path.read_bytes()
    with pytest.raises(SampleStoreError) as info:
        SampleStore.open(path, fingerprint(decoding={"temperature": 0.7}))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "decoding.temperature is 1.0 in the store, 0.7 in this run" in message
    with pytest.raises(SampleStoreError, match="shard 0/1, not shard 1/2"):
        SampleStore.open(path, fingerprint(), Shard(1, 2))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gens.sqlite"]


def test_duplicate_samples_are_refused_and_the_batch_is_not_written(tmp_path):
    examples = make_examples(3)
    with sampled_store(tmp_path / "gens.sqlite", examples[:2]) as store:
        stored = next(store.rows())
        fresh = replace(stored, example_uid=examples[2].uid, example_index=2)
        changed = replace(stored, text="something else")
        with pytest.raises(SampleStoreError, match=r"sample \('ex-0000', 0, 'blob', 7\) is already stored"):
            store.write([fresh, changed])
        assert store.count() == 2 * SAMPLES
        assert next(store.rows()) == stored
        with pytest.raises(ValueError, match="appears twice"):
            store.write([fresh, fresh])
        with pytest.raises(ValueError, match="method/seed"):
            store.write([replace(fresh, seed=8)])
        assert store.count() == 2 * SAMPLES


def test_resume_skips_complete_examples_and_completes_partial_ones(tmp_path, capsys):
    examples = make_examples(10)
    path = tmp_path / "gens.sqlite"
    with sampled_store(path, examples[:4]) as store:
        # Example 4 keeps one sample only, as after a salvage that lost the others.
        store.write([stored_row(fake_generation(examples[4], 0), example_index=4)])
    calls: list[list[str]] = []

    def recording(batch: list[Example]) -> list[Generation]:
        calls.append([example.uid for example in batch])
        return produce(batch)

    with SampleStore.open(path, fingerprint()) as store:
        summary = run_sampling(store, examples, recording, batch_size=3, progress=True)
        rows = list(store.rows())
    assert calls == [["ex-0004", "ex-0005", "ex-0006"], ["ex-0007", "ex-0008", "ex-0009"]]
    assert (summary.examples, summary.already_complete, summary.completed) == (10, 4, 6)
    assert rows == reference_rows(tmp_path, examples)
    bar = capsys.readouterr().err
    assert "4/10" in bar and "10/10" in bar and "example" in bar


def test_a_producer_that_drops_samples_is_refused_before_writing(tmp_path):
    with SampleStore.open(tmp_path / "gens.sqlite", fingerprint()) as store:
        with pytest.raises(ValueError, match=r"left example 'ex-0001' with samples \[0, 1\]"):
            run_sampling(store, make_examples(2), lambda batch: produce(batch)[:-1], batch_size=2, progress=False)
        assert store.count() == 0


def test_shards_cover_every_example_once_and_merge_equals_one_run(tmp_path):
    examples = make_examples(23)
    store = tmp_path / "gens.sqlite"
    owners: dict[str, list[int]] = {}
    for index in range(3):
        shard = Shard(index, 3)
        with sampled_store(shard.path_for(store), examples, shard) as part:
            for uid in part.complete_examples():
                owners.setdefault(uid, []).append(index)
    assert sorted(owners) == [e.uid for e in examples]
    assert all(len(shards) == 1 for shards in owners.values())
    assert [p.name for p in shard_paths(store, 3)] == [f"gens.shard-{i}-of-3.sqlite" for i in range(3)]

    assert merge(shard_paths(store, 3), store) == len(examples) * SAMPLES
    assert merge(shard_paths(store, 3), store) == len(examples) * SAMPLES  # again: identical copies kept once
    with SampleStore.open(store, fingerprint()) as merged:
        assert list(merged.rows()) == reference_rows(tmp_path, examples)
        assert {r["shard"] for r in merged.records()} == {"0/3", "1/3", "2/3"}
        assert run_sampling(merged, examples, produce, batch_size=4, progress=False).completed == 0


def test_resolve_shard_splits_machines_among_processes():
    assert resolve_shard(None) == Shard(0, 1)
    assert resolve_shard("1/2", process_index=3, num_processes=4) == Shard(7, 8)
    for bad in ("2/2", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError, match="expected I/N"):
            resolve_shard(bad)


def test_merge_refuses_other_configurations_and_conflicting_samples(tmp_path):
    examples = make_examples(4)
    with sampled_store(tmp_path / "a.sqlite", examples):
        pass
    with SampleStore.open(tmp_path / "b.sqlite", fingerprint(seed=8)) as other:
        run_sampling(other, examples, produce, batch_size=4, progress=False)
    out = tmp_path / "merged.sqlite"
    with pytest.raises(
        SampleStoreError, match=r"b\.sqlite: made with another configuration \(seed is 7 in .*a\.sqlite"
    ):
        merge([tmp_path / "a.sqlite", tmp_path / "b.sqlite"], out)
    assert not out.exists()

    with SampleStore.open(tmp_path / "c.sqlite", fingerprint()) as conflicting:
        changed = [replace(g, text="different") for g in produce(examples[:1])]
        run_sampling(conflicting, examples[:1], lambda batch: changed, batch_size=1, progress=False)
    with pytest.raises(SampleStoreError, match=r"c\.sqlite: sample \('ex-0000', 0\) differs"):
        merge([tmp_path / "a.sqlite", tmp_path / "c.sqlite"], out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sqlite", "b.sqlite", "c.sqlite"]


def test_export_round_trips_through_jsonl_and_parquet(tmp_path):
    import pyarrow.parquet as pq

    with sampled_store(tmp_path / "gens.sqlite", make_examples(7)) as store:
        records = list(store.records())
        assert store.export_jsonl(tmp_path / "gens.jsonl") == len(records) == 7 * SAMPLES
        assert store.export_parquet(tmp_path / "gens.parquet", rows_per_group=5) == len(records)
    lines = (tmp_path / "gens.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
    assert pq.read_table(tmp_path / "gens.parquet").to_pylist() == records
    assert records[0]["num_tokens"] == len(records[0]["token_ids"]) == len(records[0]["token_logprobs"])


def _corrupt_page_holding(path: Path, marker: bytes) -> None:
    """Overwrite, with random bytes, the whole page of ``path`` that holds ``marker``."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    page = data.index(marker) // page_size
    assert 3 < page < len(data) // page_size  # past the schema, meta and table root pages
    data[page * page_size : (page + 1) * page_size] = random.Random(0).randbytes(page_size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["middle", "last"])
def test_corrupt_store_is_refused_and_salvage_keeps_the_readable_rows(tmp_path, where):
    examples = make_examples(400)
    path = tmp_path / "gens.sqlite"
    with sampled_store(path, examples) as store:
        originals = {row.key: row for row in store.rows()}
    assert path.stat().st_size > 100 * 4096
    damaged = examples[200] if where == "middle" else examples[-1]
    _corrupt_page_holding(path, damaged.prompt.encode())

    with pytest.raises(CorruptStoreError) as info:
        SampleStore.open(path, fingerprint())
    assert str(info.value).startswith(f"{path}: corrupt sample store (") and "\n" not in str(info.value)

    result = salvage(path, tmp_path / "salvaged.sqlite")
    with SampleStore.open(tmp_path / "salvaged.sqlite", fingerprint()) as rescued:
        rescued.check_integrity(full=True)
        kept = {row.key: row for row in rescued.rows()}
        assert all(originals[key] == row for key, row in kept.items())
        lost = originals.keys() - kept.keys()
        assert (result.recovered, result.lost) == (len(kept), len(lost))
        assert (damaged.uid, 0, "blob", 7) in lost
        # One page's rows only: a short run of consecutive rows.
        order = list(originals)
        positions = sorted(order.index(key) for key in lost)
        assert 0 < len(lost) <= 20 and positions == list(range(positions[0], positions[0] + len(lost)))
        # Resuming into the salvaged store regenerates exactly what was lost.
        run_sampling(rescued, examples, produce, batch_size=16, progress=False)
        assert {row.key: row for row in rescued.rows()} == originals


def test_salvage_refuses_to_overwrite(tmp_path):
    with sampled_store(tmp_path / "gens.sqlite", make_examples(2)):
        pass
    (tmp_path / "out.sqlite").write_bytes(b"")
    with pytest.raises(SampleStoreError, match="already exists"):
        salvage(tmp_path / "gens.sqlite", tmp_path / "out.sqlite")


def test_a_file_that_is_not_a_store_gives_a_clear_error(tmp_path):
    path = tmp_path / "gens.sqlite"
    path.write_bytes(b"not a database" * 500)
    with pytest.raises(CorruptStoreError, match=r"gens\.sqlite: corrupt sample store \(file is not a database\)"):
        SampleStore.open(path, fingerprint())


KILL_SCRIPT = """
import sys
import time

from bayespeft.sample_store import SampleStore, run_sampling

sys.path.insert(0, {tests_dir!r})
from test_sample_store import fingerprint, make_examples, produce


def slow_produce(batch, delay):
    time.sleep(delay)
    return produce(batch)


if __name__ == "__main__":
    store_path, delay = sys.argv[1], float(sys.argv[2])
    with SampleStore.open(store_path, fingerprint()) as store:
        run_sampling(store, make_examples(40), lambda batch: slow_produce(batch, delay), batch_size=2, progress=False)
"""


def _row_count(path: Path) -> int:
    if not path.exists():
        return 0
    connection = sqlite3.connect(path, timeout=30)
    try:
        return connection.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        connection.close()


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    script = tmp_path / "sample_script.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(tests_dir=str(Path(__file__).parent))), encoding="utf-8")
    store = tmp_path / "gens.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), str(store)]
    total = 40 * SAMPLES

    process = subprocess.Popen([*command, "0.2"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while _row_count(store) == 0:
            assert process.poll() is None, f"sampling ended before the kill: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no rows written in time"
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    with SampleStore.open(store, fingerprint()) as killed:
        after_kill = list(killed.rows())
        complete = killed.complete_examples()
    assert 0 < len(after_kill) < total
    assert len(after_kill) == len(complete) * SAMPLES and len(complete) % 2 == 0  # whole batches only

    subprocess.run([*command, "0"], env=env, check=True, timeout=300)
    with SampleStore.open(store, fingerprint()) as resumed:
        final = list(resumed.rows())
    assert len(final) == len({row.key for row in final}) == total
    assert final == reference_rows(tmp_path, make_examples(40))
    assert all(row in final for row in after_kill)
