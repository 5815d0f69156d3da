"""Config composition on plain mappings, Hydra style: a base YAML, group files and dotted overrides.

This is the layer under :mod:`bayespeft.config`: it reads YAML and merges mappings, and
:func:`bayespeft.config.load_config` turns the result into a validated ``RunConfig`` (the one
function the commands and the Python API compose with).

A config directory holds a base file and one folder per group (a top-level section of
:class:`~bayespeft.config.RunConfig`)::

    configs/
      base.yaml              defaults: [model: smollm2, method: blob, data: arc_easy]
                             train: {lr: 5.0e-4, max_steps: 200}
      model/smollm2.yaml     name: smollm2-135m
      method/blob.yaml       name: blob
                             beta: 0.2
      data/arc_easy.yaml     dataset: arc_easy

Rules:

* Merge order: base <- model <- method <- data <- train <- eval group files <- dotted
  overrides. Mappings merge key by key; anything else (lists included) is replaced.
* A group file for group ``g`` holds the contents of section ``g``; a file whose top level
  is exactly ``{g: {...}}`` is unwrapped first, so both spellings work.
* A method file naming another method than the one configured so far replaces the method
  section instead of merging into it (one method's parameters mean nothing to another).
* Group files are chosen, later winning, by the base's ``defaults`` list, the ``groups``
  argument and overrides without a dot: ``method=blob`` selects ``<config dir>/method/blob.yaml``
  (a value ending in ``.yaml``/``.yml`` is a file path), while ``method.beta=0.1`` sets a value.
* The config directory is ``config_dir`` if given, else the base file's folder, else ``configs``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["GROUPS", "apply_override", "compose_mapping", "deep_merge", "override_item", "read_yaml", "split_overrides"]

#: Config groups, in merge order.
GROUPS = ("model", "method", "data", "train", "eval")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A new mapping: ``update`` merged into ``base``; nested mappings merge, other values replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def split_overrides(overrides: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Separate group selections (``method=blob``) from dotted overrides (``method.beta=0.1``)."""
    selections: dict[str, str] = {}
    dotted: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or "." in key:
            dotted.append(item)  # apply_override reports a malformed item
            continue
        _check_group(key, f"override {item!r}")
        if not value.strip():
            raise ConfigError(f"override {item!r}: name a {key} config, e.g. {key}=<name>")
        selections[key] = value.strip()
    return selections, dotted


def compose_mapping(
    base: str | Path | Mapping[str, Any] | None,
    groups: Mapping[str, str | Path] | None = None,
    overrides: Iterable[str] = (),
    *,
    config_dir: str | Path | None = None,
) -> tuple[dict[str, Any], str]:
    """The composed plain config and a description of its sources (see the module docstring for the rules).

    ``base`` is a YAML file, an inline mapping or None (the defaults); ``groups`` maps a
    group to a config name or file. Errors name the file, group or key at fault.
    """
    if base is None:
        raw: dict[str, Any] = {}
        sources = []
    elif isinstance(base, Mapping):
        raw, sources = copy.deepcopy(dict(base)), ["inline config"]
    else:
        base = Path(base)
        raw, sources = _read_mapping(base, "config file"), [str(base)]
    directory = Path(config_dir) if config_dir is not None else base.parent if isinstance(base, Path) else None
    directory = directory or Path("configs")
    selections = _defaults(raw.pop("defaults", None), sources[0] if sources else "config")
    for group, choice in (groups or {}).items():
        _check_group(group, "groups")
        selections[group] = choice
    chosen, dotted = split_overrides(overrides)
    selections.update(chosen)
    for group in GROUPS:
        if group in selections:
            path = _group_file(group, selections[group], directory)
            raw = _merge_group(raw, group, _read_mapping(path, f"{group} config"), path)
            sources.append(str(path))
    for item in dotted:
        apply_override(raw, item)
    if dotted:
        sources.append("overrides")
    return raw, " + ".join(sources) or "defaults"


def override_item(key: str, value: Any) -> str:
    """A ``key=value`` override: group selections by name, dotted keys as JSON (valid YAML)."""
    return f"{key}={value}" if "." not in key else f"{key}={json.dumps(value)}"


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content (safe loader); a missing, non-UTF-8 or malformed file is a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``raw[a][b] = value`` from ``"a.b=value"``; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. method.beta=0.1")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty section in the YAML (``method:``)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def _check_group(name: str, where: str) -> None:
    if name not in GROUPS:
        raise ConfigError(
            f"{where}: unknown config group {name!r} (groups: {', '.join(GROUPS)}); "
            "set a single value with a dotted key such as method.beta=0.1"
        )


def _defaults(entries: Any, source: str) -> dict[str, str | Path]:
    """The ``defaults`` of a base config: a list of ``group: name`` entries or one mapping."""
    if entries is None:
        return {}
    if isinstance(entries, Mapping):
        entries = [{key: value} for key, value in entries.items()]
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: defaults must be a list of 'group: name' entries, got {entries!r}")
    selections: dict[str, str | Path] = {}
    for entry in entries:
        if not (isinstance(entry, Mapping) and len(entry) == 1):
            raise ConfigError(f"{source}: defaults entry {entry!r} must look like 'group: name', e.g. 'method: blob'")
        ((group, name),) = entry.items()
        _check_group(str(group), f"{source}: defaults")
        if group in selections:
            raise ConfigError(f"{source}: defaults selects group {group!r} twice")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: defaults entry for {group!r} must name a config, got {name!r}")
        selections[group] = name
    return selections


def _group_file(group: str, choice: str | Path, directory: Path) -> Path:
    """The file a group selection names; a missing one lists the available choices."""
    if isinstance(choice, Path) or choice.endswith((".yaml", ".yml")):
        path = Path(choice)
        if not path.is_file():
            raise ConfigError(f"{group} config {path}: file not found")
        return path
    path = directory / group / f"{choice}.yaml"
    if not path.is_file():
        folder = directory / group
        names = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        available = ", ".join(names) if names else f"none; {folder} has no .yaml files"
        raise ConfigError(f"{group}={choice}: {path} not found (available: {available})")
    return path


def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file's top-level mapping (an empty file is ``{}``); errors name the file and line."""
    data = read_yaml(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge_group(raw: dict[str, Any], group: str, content: dict[str, Any], path: Path) -> dict[str, Any]:
    """Merge a group file's section into ``raw`` (unwrapping ``{group: {...}}``)."""
    if list(content) == [group]:
        content = content[group] or {}
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: {group} must be a mapping, got {content!r}")
    current = raw.get(group) or {}
    if not isinstance(current, dict):
        raise ConfigError(f"{group} must be a mapping before {path} is merged, got {current!r}")
    if group == "method" and "name" in content and current.get("name", content["name"]) != content["name"]:
        current = {}  # another method: drop the parameters of the previous one
    return {**raw, group: deep_merge(current, content)}
