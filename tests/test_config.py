"""Run configuration: defaults, YAML, dotted overrides, type checks and field validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bayespeft.compose import apply_override
from bayespeft.config import RunConfig, load_config, save_config
from bayespeft.errors import ConfigError
from bayespeft.methods import BlobConfig, MapConfig, MleConfig


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_validate():
    config = load_config(None)
    assert isinstance(config.method, BlobConfig)
    assert config.model.lora.r == 8
    assert config.method.beta == pytest.approx(0.2)
    assert config.eval.n_samples == 10
    RunConfig(method=BlobConfig()).validate()


def test_yaml_nested_sections(tmp_path):
    path = write(
        tmp_path / "run.yaml",
        """
model:
  name: smollm2-135m
  lora:
    r: 4
    alpha: 8
    target_modules: [q_proj, v_proj]
method:
  name: blob
  beta: 0.15
  eps: 0.03
data:
  dataset: obqa
  max_train_examples: 64
train:
  lr: 0.0002
  batch_size: 2
eval:
  n_samples: 5
""",
    )
    config = load_config(path)
    assert config.model.lora.r == 4
    assert config.model.lora.alpha == 8.0 and isinstance(config.model.lora.alpha, float)
    assert config.model.lora.target_modules == ["q_proj", "v_proj"]
    assert isinstance(config.method, BlobConfig)
    assert config.method.beta == pytest.approx(0.15)
    assert config.method.eps == pytest.approx(0.03)
    assert config.data.dataset == "obqa"
    assert config.data.max_train_examples == 64
    assert config.train.lr == pytest.approx(2e-4)
    assert config.train.batch_size == 2
    assert config.eval.n_samples == 5


def test_yaml_selects_other_methods(tmp_path):
    assert isinstance(load_config(write(tmp_path / "a.yaml", "method: {name: mle}\n")).method, MleConfig)
    config = load_config(write(tmp_path / "b.yaml", "method:\n  name: map\n  weight_decay: 0.001\n"))
    assert isinstance(config.method, MapConfig)
    assert config.method.weight_decay == pytest.approx(1e-3)


def test_dotted_overrides():
    config = load_config(
        None,
        ["method.beta=0.1", "train.lr=5e-4", "model.lora.target_modules=[q_proj,v_proj]", "eval.n_samples=0"],
    )
    assert config.method.beta == pytest.approx(0.1)
    assert config.train.lr == pytest.approx(5e-4)
    assert isinstance(config.train.lr, float)
    assert config.model.lora.target_modules == ["q_proj", "v_proj"]
    assert config.eval.n_samples == 0


def test_overrides_win_over_yaml(tmp_path):
    path = write(tmp_path / "run.yaml", "method:\n  beta: 0.3\ntrain:\n  lr: 0.001\n")
    config = load_config(path, ["method.beta=0.05"])
    assert config.method.beta == pytest.approx(0.05)
    assert config.train.lr == pytest.approx(1e-3)


def test_override_into_empty_yaml_section(tmp_path):
    path = write(tmp_path / "run.yaml", "method:\ntrain:\n")
    config = load_config(path, ["method.beta=0.4", "train.batch_size=3"])
    assert config.method.beta == pytest.approx(0.4)
    assert config.train.batch_size == 3


def test_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads 5e-4 as a string; float fields must still accept it.
    config = load_config(write(tmp_path / "run.yaml", "train:\n  lr: 5e-4\n  adam_eps: 1E-6\n"))
    assert config.train.lr == pytest.approx(5e-4)
    assert config.train.adam_eps == pytest.approx(1e-6)
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(None, ["train.batch_size=1e3"])


def test_ints_accepted_for_floats(tmp_path):
    config = load_config(None, ["train.lr=1", "method.beta=1", "model.lora.alpha=32"])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.method.beta == 1.0 and isinstance(config.method.beta, float)
    assert config.model.lora.alpha == 32.0 and isinstance(config.model.lora.alpha, float)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("foo: 1\n", "foo"),
        ("method:\n  foo: 1\n", "method.foo"),
        ("train:\n  foo: 1\n", "train.foo"),
        ("model:\n  lora:\n    foo: 1\n", "model.lora.foo"),
        ("eval:\n  foo: 1\n", "eval.foo"),
        ("data:\n  foo: 1\n", "data.foo"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path, yaml_text, key):
    path = write(tmp_path / "run.yaml", yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"unknown key {key}" in message
    assert str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("item", ["method.foo=1", "train.foo=1"])
def test_unknown_override_key(item):
    with pytest.raises(ConfigError, match=item.split("=")[0]):
        load_config(None, [item])


def test_parameter_of_another_method_is_unknown():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["method.name=mle", "method.beta=0.3"])
    assert "method.beta" in str(info.value)


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=2.5", "train.batch_size"),
        ("train.lr=fast", "train.lr"),
        ("train.shuffle=maybe", "train.shuffle"),
        ("model.lora.r=true", "model.lora.r"),
        ("model.lora.target_modules=5", "model.lora.target_modules"),
        ("train=5", "train"),
    ],
)
def test_wrong_type_names_key(item, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [item])
    assert key in str(info.value)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["method.beta"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"train": 3}, "train.lr=1")


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "model:\n  name: x\ntrain:\n  lr: [1, 2\n  batch_size: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:")
    line = message[len(str(path)) + 1 :].split(":")[0]
    assert line.isdigit() and int(line) >= 4
    assert "invalid YAML" in message


def test_top_level_not_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_empty_config_file_is_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == load_config(None)


def test_to_dict_from_dict_round_trip():
    for overrides in (
        ["method.beta=0.1", "model.lora.target_modules=[q_proj,v_proj]", "data.max_train_examples=32"],
        ["method.name=mle", "eval.n_samples=0"],
        ["method.name=map", "method.weight_decay=0.01"],
        ["method.name=blob_laplace", "method.eps=-3"],
    ):
        config = load_config(None, overrides)
        raw = config.to_dict()
        assert raw["method"]["name"] == config.method.name
        again = RunConfig.from_dict(raw).validate()
        assert again == config
        assert type(again.method) is type(config.method)
        assert again.to_dict() == raw


def test_save_config_round_trip(tmp_path):
    config = load_config(None, ["method.beta=0.1", "train.lr=5e-4", "model.lora.target_modules=[q_proj,v_proj]"])
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert yaml.safe_load(path.read_text())["method"]["name"] == "blob"
    assert load_config(path) == config
    assert load_config(path).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ("model.lora.r=0", "model.lora.r"),
        ("model.lora.r=-2", "model.lora.r"),
        ("method.beta=0", "method.beta"),
        ("method.beta=-0.1", "method.beta"),
        ("eval.n_samples=-1", "eval.n_samples"),
        ("method.eps=0", "method.eps"),
        ("method.gamma=0", "method.gamma"),
        ("method.kl_lr=0", "method.kl_lr"),
        ("method.kl_schedule=sometimes", "method.kl_schedule"),
        ("model.lora.alpha=0", "model.lora.alpha"),
        ("model.lora.dropout=1", "model.lora.dropout"),
        ("model.lora.target_modules=[]", "model.lora.target_modules"),
        ("model.precision=fp8", "model.precision"),
        ("train.lr=0", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.max_steps=-1", "train.max_steps"),
        ("train.warmup_ratio=1", "train.warmup_ratio"),
        ("train.adam_eps=0", "train.adam_eps"),
        ("train.checkpoint_every=0", "train.checkpoint_every"),
        ("data.max_train_examples=0", "data.max_train_examples"),
        ("data.max_length=2", "data.max_length"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.samples_per_pass=0", "eval.samples_per_pass"),
        ("eval.n_bins=0", "eval.n_bins"),
        ("method.name=nope", "method.name"),
        ("train.lr=.inf", "train.lr"),
        ("train.lr=1e40", "train.lr"),
        ("train.warmup_ratio=.nan", "train.warmup_ratio"),
        ("method.beta=-.inf", "method.beta"),
        ("model.lora.alpha=.nan", "model.lora.alpha"),
        ("eval.temperature=.inf", "eval.temperature"),
        ("train.seed=-1", "train.seed"),
        ("train.seed=4294967296", "train.seed"),
        ("eval.seed=-5", "eval.seed"),
    ],
)
def test_invalid_hyperparameters_name_field(item, field):
    with pytest.raises(ConfigError) as info:
        load_config(None, [item])
    assert field in str(info.value)
    assert "\n" not in str(info.value)


def test_map_weight_decay_must_be_positive():
    with pytest.raises(ConfigError, match=r"method\.weight_decay"):
        load_config(None, ["method.name=map", "method.weight_decay=0"])


def test_negative_eps_selects_softplus():
    config = load_config(None, ["method.eps=-3"])
    assert config.method.parameterization.value == "softplus"
    with pytest.raises(ConfigError, match=r"method\.eps"):
        load_config(None, ["method.eps=-3", "method.std_parameterization=square"])


def test_seed_range_ends_are_accepted():
    assert load_config(None, ["train.seed=0"]).train.seed == 0
    assert load_config(None, ["train.seed=4294967295"]).train.seed == 2**32 - 1


def test_non_utf8_config_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"train:\n  lr: 0.1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: not UTF-8 text"):
        load_config(path)
