"""Crash-safe checkpoint I/O for resumable training that never deserialises Python objects.

Everything is stored as safetensors (tensors) or JSON (everything else), and every
file or folder is written to a temporary name first and then renamed into place, so
a crash never leaves a half-written checkpoint under its final name. No arbitrary
objects are ever loaded: optimizer, scheduler and RNG states are flattened into tensors plus
JSON with explicit tags for the Python types JSON lacks (tuples, tensor references).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from bayespeft.errors import BayesPeftError, RunDirError

__all__ = [
    "TrainingCheckpoint",
    "atomic_file",
    "capture_rng_state",
    "find_latest_checkpoint",
    "json_default",
    "list_checkpoints",
    "load_tensors",
    "load_training_checkpoint",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
    "prune_checkpoints",
    "read_json",
    "restore_rng_state",
    "save_tensors_atomic",
    "save_training_checkpoint",
    "scheduler_state_from_json",
    "scheduler_state_to_json",
    "write_json_atomic",
]

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_FORMAT_VERSION = 1
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# JSON tags for values JSON cannot represent directly.
_TUPLE_TAG = "__tuple__"
_TENSOR_TAG = "__tensor__"


# ---------------------------------------------------------------------------
# Atomic primitives
# ---------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry so that a rename inside it survives power loss (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temp file beside ``path`` to write; a clean exit renames it over ``path``, and it is removed in any case.

    So a crash (or an exception in the block) leaves ``path`` as it was, and a finished write leaves it whole. The
    temp file is hidden and on the same filesystem (so the rename is atomic); it is fsynced before the rename and the
    directory entry after it.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def json_default(obj: Any) -> Any:
    """``json.dumps``'s ``default``: the few non-JSON types callers commonly pass (paths, numpy scalars)."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file, fsync, rename).

    Paths become strings and numpy scalars Python numbers. ``inf``/``nan`` are written
    as the non-standard ``Infinity``/``NaN`` tokens, which Python's json reads back
    exactly (other JSON parsers may not). Serialisation happens before any file is
    touched, so a ``TypeError`` for an unencodable object leaves ``path`` unchanged.
    """
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True, default=json_default) + "\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically: a crash leaves the old file or the new one, whole."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a rendered figure, say): the old file or the new one, whole."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, raising ``RunDirError`` naming the file if missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunDirError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: cannot read: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from None


def save_tensors_atomic(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Save tensors as safetensors atomically.

    Tensors are detached, moved to CPU and made contiguous; a tensor sharing storage
    with an earlier one is cloned, because safetensors refuses shared storage.
    """
    path = Path(path)
    seen_storages: set[int] = set()
    prepared: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storages and t.numel() > 0:
            t = t.clone()
        seen_storages.add(t.untyped_storage().data_ptr())
        prepared[key] = t
    with atomic_file(path) as tmp:
        save_file(prepared, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU, raising ``RunDirError`` naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(f"{path}: corrupt or unreadable safetensors file: {exc}") from exc


# ---------------------------------------------------------------------------
# Tagged JSON encoding of nested state dicts
# ---------------------------------------------------------------------------


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor] | None) -> Any:
    """Encode a nested state value as JSON, moving tensors into ``tensors`` under ``key``.

    Tuples and tensor references get tag objects so they decode to the same types;
    ``tensors=None`` means tensors are not allowed.
    """
    if isinstance(value, torch.Tensor):
        if tensors is None:
            raise BayesPeftError(f"{key}: tensor values cannot be stored in JSON state")
        tensors[key] = value
        return {_TENSOR_TAG: key}
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        encoded = {}
        for k, v in value.items():
            if not isinstance(k, str) or k in (_TUPLE_TAG, _TENSOR_TAG):
                raise BayesPeftError(f"{key}: unsupported state key {k!r}")
            encoded[k] = _encode(v, f"{key}.{k}", tensors)
        return encoded
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise BayesPeftError(f"{key}: cannot store a {type(value).__name__} in a checkpoint")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``_encode``: rebuild tuples and look tensor references up in ``tensors``."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TENSOR_TAG}:
            key = value[_TENSOR_TAG]
            if key not in tensors:
                raise BayesPeftError(f"checkpoint is missing tensor {key!r}")
            return tensors[key]
        if set(value) == {_TUPLE_TAG}:
            return tuple(_decode(v, tensors) for v in value[_TUPLE_TAG])
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------
# Optimizer and scheduler state
# ---------------------------------------------------------------------------


def optimizer_state_to_files(optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``state.<param>.<name>``) and JSON.

    Scalars such as ``step`` keep their kind: tensor steps go to the tensor file and
    Python ints/floats stay in JSON, so ``optimizer_state_from_files`` rebuilds an
    identical state dict.
    """
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, Any] = {}
    for index, param_state in state_dict["state"].items():
        if not isinstance(index, int):
            raise BayesPeftError(f"optimizer state key {index!r} is not a parameter index")
        state_json[str(index)] = _encode(param_state, f"state.{index}", tensors)
    groups = [_encode(group, f"param_groups.{i}", tensors) for i, group in enumerate(state_dict["param_groups"])]
    return tensors, {"state": state_json, "param_groups": groups}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a state dict accepted by ``optimizer.load_state_dict`` from the two halves."""
    try:
        state = {int(index): _decode(s, tensors) for index, s in meta["state"].items()}
        groups = _decode(meta["param_groups"], tensors)
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise BayesPeftError(f"malformed optimizer state: {exc!r}") from exc
    return {"state": state, "param_groups": groups}


def scheduler_state_to_json(scheduler: LRScheduler) -> dict[str, Any]:
    """Encode ``scheduler.state_dict()`` as JSON.

    ``LambdaLR``/``MultiplicativeLR`` store ``None`` for plain-function lambdas (the
    function itself is rebuilt by the caller), which is kept as ``null``.
    """
    return _encode(scheduler.state_dict(), "scheduler", None)


def scheduler_state_from_json(obj: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a state dict accepted by ``scheduler.load_state_dict``."""
    return _decode(obj, {})


# ---------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Capture torch (CPU and every CUDA device), numpy global and Python ``random`` states."""
    tensors = {"torch.cpu": torch.get_rng_state()}
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, s in enumerate(cuda_states):
        tensors[f"torch.cuda.{i}"] = s
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {
        "cuda_devices": len(cuda_states),
        "numpy": {
            "algorithm": algorithm,
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore states saved by ``capture_rng_state``.

    CUDA states are restored for the devices present on both machines; resuming on a
    different GPU count therefore only loses bitwise reproducibility on the extra ones.
    """
    try:
        torch.set_rng_state(tensors["torch.cpu"])
        if torch.cuda.is_available():
            count = min(meta["cuda_devices"], torch.cuda.device_count())
            for i in range(count):
                torch.cuda.set_rng_state(tensors[f"torch.cuda.{i}"], device=i)
        np_meta = meta["numpy"]
        keys = tensors["numpy.keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (np_meta["algorithm"], keys, np_meta["pos"], np_meta["has_gauss"], np_meta["cached_gaussian"])
        )
        py = meta["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BayesPeftError(f"malformed RNG state: {exc!r}") from exc


# ---------------------------------------------------------------------------
# Training checkpoint folders
# ---------------------------------------------------------------------------


@dataclass
class TrainingCheckpoint:
    """Everything ``load_training_checkpoint`` read back, ready for the ``load_state_dict`` calls."""

    directory: Path
    trainable: dict[str, torch.Tensor]
    optimizers: dict[str, dict[str, Any]]
    schedulers: dict[str, dict[str, Any]]
    rng_tensors: dict[str, torch.Tensor]
    rng_meta: dict[str, Any]
    state: dict[str, Any]


def _check_names(kind: str, names: Iterable[str]) -> list[str]:
    """Names become file names, so allow only safe characters."""
    checked = list(names)
    for name in checked:
        if not _NAME_RE.fullmatch(name):
            raise BayesPeftError(f"{kind} name {name!r} must match [A-Za-z0-9_.-]+")
    return checked


def _is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def _sibling(directory: Path, suffix: str) -> Path:
    """Hidden staging names used during the swap: ``.<name>.new`` and ``.<name>.old``."""
    return directory.with_name(f".{directory.name}.{suffix}")


def _remove_dir(directory: Path) -> None:
    """Delete a checkpoint folder, dropping its COMPLETE marker first so a crash
    mid-deletion never leaves a partial folder that looks complete."""
    if not directory.exists():
        return
    (directory / COMPLETE_MARKER).unlink(missing_ok=True)
    _fsync_dir(directory)
    shutil.rmtree(directory)


def _recover(directory: Path) -> None:
    """Finish or roll back a swap interrupted by a crash, then drop leftover staging folders.

    A complete ``directory`` wins; otherwise a complete ``.new`` is promoted, else a
    complete ``.old`` is moved back.
    """
    new, old = _sibling(directory, "new"), _sibling(directory, "old")
    if not _is_complete(directory):
        for candidate in (new, old):
            if _is_complete(candidate):
                _remove_dir(directory)
                os.replace(candidate, directory)
                _fsync_dir(directory.parent)
                break
    _remove_dir(new)
    _remove_dir(old)


def save_training_checkpoint(
    directory: str | os.PathLike[str],
    *,
    trainable: dict[str, torch.Tensor],
    optimizers: dict[str, Optimizer],
    schedulers: dict[str, LRScheduler],
    state: dict[str, Any],
) -> Path:
    """Write a complete resumable checkpoint folder and swap it in atomically.

    Files are written into ``.<name>.new`` beside ``directory``, the ``COMPLETE``
    marker (a small JSON manifest) last; then the old folder is renamed away, the new
    one renamed in and the old one removed. A crash at any point leaves the old or the
    new complete checkpoint (possibly under a staging name, which
    ``find_latest_checkpoint`` and ``load_training_checkpoint`` recover). The RNG
    state is captured at call time. Returns the final folder path.
    """
    directory = Path(directory)
    optimizer_names = _check_names("optimizer", optimizers)
    scheduler_names = _check_names("scheduler", schedulers)
    rng_tensors, rng_meta = capture_rng_state()
    directory.parent.mkdir(parents=True, exist_ok=True)
    _recover(directory)

    new, old = _sibling(directory, "new"), _sibling(directory, "old")
    new.mkdir()
    save_tensors_atomic(new / "trainable.safetensors", trainable)
    for name, optimizer in optimizers.items():
        opt_tensors, opt_meta = optimizer_state_to_files(optimizer)
        save_tensors_atomic(new / f"optimizer-{name}.safetensors", opt_tensors)
        write_json_atomic(new / f"optimizer-{name}.json", opt_meta)
    for name, scheduler in schedulers.items():
        write_json_atomic(new / f"scheduler-{name}.json", scheduler_state_to_json(scheduler))
    save_tensors_atomic(new / "rng.safetensors", rng_tensors)
    write_json_atomic(new / "rng.json", rng_meta)
    write_json_atomic(new / "state.json", state)
    manifest = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "optimizers": optimizer_names,
        "schedulers": scheduler_names,
    }
    write_json_atomic(new / COMPLETE_MARKER, manifest)

    if directory.exists():
        os.replace(directory, old)
    os.replace(new, directory)
    _fsync_dir(directory.parent)
    _remove_dir(old)
    return directory


def load_training_checkpoint(directory: str | os.PathLike[str]) -> TrainingCheckpoint:
    """Load a folder written by ``save_training_checkpoint``.

    Raises ``RunDirError`` naming the folder (and file) if it is incomplete or corrupt.
    """
    directory = Path(directory)
    _recover(directory)
    if not _is_complete(directory):
        raise RunDirError(f"{directory}: not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    try:
        manifest = read_json(directory / COMPLETE_MARKER)
        if manifest.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise RunDirError(f"unsupported checkpoint format {manifest.get('format_version')!r}")
        optimizers = {
            name: optimizer_state_from_files(
                load_tensors(directory / f"optimizer-{name}.safetensors"),
                read_json(directory / f"optimizer-{name}.json"),
            )
            for name in manifest["optimizers"]
        }
        schedulers = {
            name: scheduler_state_from_json(read_json(directory / f"scheduler-{name}.json"))
            for name in manifest["schedulers"]
        }
        return TrainingCheckpoint(
            directory=directory,
            trainable=load_tensors(directory / "trainable.safetensors"),
            optimizers=optimizers,
            schedulers=schedulers,
            rng_tensors=load_tensors(directory / "rng.safetensors"),
            rng_meta=read_json(directory / "rng.json"),
            state=read_json(directory / "state.json"),
        )
    except (BayesPeftError, KeyError, AttributeError, TypeError) as exc:
        raise RunDirError(f"{directory}: corrupt checkpoint: {exc}") from exc


def _checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of every ``checkpoint-<step>`` folder or staging leftover in ``run_dir``."""
    steps = set()
    for entry in run_dir.iterdir():
        name = entry.name
        for suffix in (".new", ".old"):
            if name.startswith(".") and name.endswith(suffix):
                name = name[1 : -len(suffix)]
        match = _CHECKPOINT_RE.fullmatch(name)
        if match and entry.is_dir():
            steps.add(int(match.group(1)))
    return sorted(steps)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders in ``run_dir``, oldest first, after recovering interrupted swaps."""
    if not run_dir.is_dir():
        return []
    found = []
    for step in _checkpoint_steps(run_dir):
        directory = run_dir / f"checkpoint-{step}"
        _recover(directory)
        if _is_complete(directory):
            found.append(directory)
    return found


def find_latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The complete ``checkpoint-<step>`` folder with the highest step, or ``None``.

    Folders without ``COMPLETE`` are ignored. Interrupted swaps are recovered first,
    so call this at resume time, not while another process is saving.
    """
    found = list_checkpoints(Path(run_dir))
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike[str], keep: int = 2) -> list[Path]:
    """Remove all but the ``keep`` newest complete checkpoints; returns the removed folders."""
    if keep < 1:
        raise BayesPeftError(f"keep must be at least 1 to stay resumable, got {keep}")
    found = list_checkpoints(Path(run_dir))
    removed = found[:-keep]
    for directory in removed:
        _remove_dir(directory)
    return removed
