"""Config composition: base <- group files <- dotted overrides, defaults lists and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bayespeft.compose import deep_merge, split_overrides
from bayespeft.config import load_config
from bayespeft.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An example config directory: a base with a defaults list and one folder per group."""
    root = tmp_path / "configs"
    write(
        root / "base.yaml",
        "defaults: [model: tiny, method: blob, data: arc_easy]\n"
        "model: {name: base-model, lora: {r: 4, target_modules: [q_proj, v_proj]}}\n"
        "train: {lr: 0.001, max_steps: 10}\n",
    )
    write(root / "model" / "tiny.yaml", "name: tiny-model\nlora: {alpha: 8}\n")
    write(root / "model" / "wrapped.yaml", "model:\n  name: wrapped-model\n  lora: {target_modules: [o_proj]}\n")
    write(root / "method" / "blob.yaml", "name: blob\nbeta: 0.2\ngamma: 4\n")
    write(root / "method" / "mle.yaml", "name: mle\n")
    write(root / "data" / "arc_easy.yaml", "dataset: arc_easy\nmax_train_examples: 100\n")
    write(root / "data" / "obqa.yaml", "data: {dataset: obqa}\n")
    return root


def test_deep_merge_merges_mappings_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3], "e": 2}, "d": None})
    assert merged == {"a": {"b": 1, "c": [3], "e": 2}, "d": None}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # inputs untouched


def test_defaults_list_and_merge_order(tree):
    config = load_config(tree / "base.yaml")
    assert config.model.name == "tiny-model"  # the model file wins over the base
    assert config.model.lora.r == 4 and config.model.lora.alpha == 8.0  # deep merge keeps the base's r
    assert config.model.lora.target_modules == ["q_proj", "v_proj"]
    assert (config.method.name, config.method.beta, config.method.gamma) == ("blob", 0.2, 4.0)
    assert config.data.max_train_examples == 100
    assert (config.train.lr, config.train.max_steps) == (0.001, 10)


def test_group_selection_versus_dotted_override(tree):
    config = load_config(tree / "base.yaml", ["method.beta=0.1", "data=obqa", "model=wrapped"])
    assert config.method.beta == 0.1 and config.method.gamma == 4.0
    assert config.data.dataset == "obqa"
    assert config.data.max_train_examples is None  # arc_easy's file was not selected
    assert config.model.lora.target_modules == ["o_proj"]  # a list is replaced, not merged


def test_dotted_overrides_win_over_group_files_in_any_order(tree):
    config = load_config(tree / "base.yaml", ["method.gamma=12", "method=blob", "train.max_steps=3"])
    assert config.method.gamma == 12.0 and config.train.max_steps == 3


def test_groups_argument_takes_names_or_paths(tree, tmp_path):
    other = write(tmp_path / "elsewhere.yaml", "method: {name: blob, beta: 0.3}\n")
    assert load_config(tree / "base.yaml", groups={"method": other}).method.beta == 0.3
    assert load_config(tree / "base.yaml", groups={"method": str(other)}).method.beta == 0.3
    assert load_config(tree / "base.yaml", groups={"data": "obqa"}).data.dataset == "obqa"


def test_switching_method_drops_the_other_methods_parameters(tree):
    inline = {"method": {"name": "blob", "beta": 0.3}}
    assert load_config(inline, groups={"method": "mle"}, config_dir=tree).method.name == "mle"
    assert load_config(inline, groups={"method": "blob"}, config_dir=tree).method.gamma == 4.0  # same method: merged
    assert load_config(inline, ["method.beta=0.3"], groups={"method": "blob"}, config_dir=tree).method.beta == 0.3


def test_inline_base_with_config_dir_and_no_base(tree, monkeypatch):
    config = load_config({"train": {"seed": 3}}, groups={"method": "blob"}, config_dir=tree)
    assert config.train.seed == 3 and config.method.gamma == 4.0
    monkeypatch.chdir(tree.parent)  # no base: groups are looked up under ./configs
    assert load_config(None, ["method=blob"]).method.gamma == 4.0
    assert load_config(None).method.name == "blob"


def test_split_overrides():
    assert split_overrides(["method=blob", "method.beta=0.1", "data=obqa"]) == (
        {"method": "blob", "data": "obqa"},
        ["method.beta=0.1"],
    )


def test_missing_group_file_names_path_and_choices(tree):
    with pytest.raises(ConfigError, match=r"method=blobb: .*method/blobb\.yaml not found \(available: blob, mle\)"):
        load_config(tree / "base.yaml", ["method=blobb"])
    with pytest.raises(ConfigError, match=r"available: none"):
        load_config(tree / "base.yaml", ["eval=fast"])


def test_unknown_group_and_empty_selection(tree):
    with pytest.raises(ConfigError, match=r"unknown config group 'optim'.*method\.beta=0\.1"):
        load_config(tree / "base.yaml", ["optim=adam"])
    with pytest.raises(ConfigError, match=r"name a method config"):
        load_config(tree / "base.yaml", ["method="])


def test_group_file_must_be_a_mapping(tree):
    write(tree / "method" / "bad.yaml", "- name: blob\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: expected a mapping at the top level, got list"):
        load_config(tree / "base.yaml", ["method=bad"])
    write(tree / "method" / "scalar.yaml", "method: 3\n")
    with pytest.raises(ConfigError, match=r"scalar\.yaml: method must be a mapping"):
        load_config(tree / "base.yaml", ["method=scalar"])


def test_unknown_key_names_the_key_and_the_files(tree):
    write(tree / "method" / "typo.yaml", "name: blob\nbetta: 0.1\n")
    with pytest.raises(ConfigError, match=r"method/typo\.yaml.*unknown key method\.betta"):
        load_config(tree / "base.yaml", ["method=typo"])
    with pytest.raises(ConfigError, match=r"unknown key train\.steps"):
        load_config(tree / "base.yaml", ["train.steps=3"])


def test_bad_defaults(tree):
    write(tree / "b1.yaml", "defaults: blob\n")
    write(tree / "b2.yaml", "defaults: [blob]\n")
    write(tree / "b3.yaml", "defaults: [method: blob, method: mle]\n")
    write(tree / "b4.yaml", "defaults: [optim: adam]\n")
    write(tree / "b5.yaml", "defaults: [1, 2\n")
    for name, pattern in [
        ("b1", "defaults must be a list"),
        ("b2", "must look like 'group: name'"),
        ("b3", "selects group 'method' twice"),
        ("b4", "unknown config group 'optim'"),
        ("b5", r"b5\.yaml:\d+: invalid YAML"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            load_config(tree / f"{name}.yaml")


def test_missing_base_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
