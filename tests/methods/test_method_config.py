"""Method construction and config validation: errors name the field at fault."""

from __future__ import annotations

import pytest

from bayespeft.errors import ConfigError
from bayespeft.methods import BlobConfig, BlobLaplaceLora, BlobLora, MapLora, MleLora, build_method, method_names
from bayespeft.methods.blob import StdParameterization


def test_registry_and_defaults():
    assert set(method_names()) >= {"mle", "map", "blob", "blob_laplace"}
    assert isinstance(build_method("BLOB"), BlobLora)
    assert isinstance(build_method("blob_laplace"), BlobLaplaceLora)
    assert isinstance(build_method("mle"), MleLora) and isinstance(build_method("map"), MapLora)
    cfg = build_method("blob").config
    assert (cfg.eps, cfg.beta, cfg.gamma, cfg.kl_schedule, cfg.optimization) == (0.05, 0.2, 8.0, "cyclic", "split")
    assert cfg.parameterization == StdParameterization.SQUARE
    assert build_method("blob", eps=-3.0).config.parameterization == StdParameterization.SOFTPLUS
    assert isinstance(build_method(BlobConfig(beta=0.1)), BlobLora)


@pytest.mark.parametrize(
    ("name", "overrides", "field"),
    [
        ("blob", {"beta": 0}, "method.beta"),
        ("blob", {"beta": -0.1}, "method.beta"),
        ("blob", {"eps": 0}, "method.eps"),
        ("blob", {"kl_lr": 0}, "method.kl_lr"),
        ("blob", {"kl_lr": -1.0}, "method.kl_lr"),
        ("blob", {"gamma": 0}, "method.gamma"),
        ("blob", {"kl_schedule": "linear"}, "method.kl_schedule"),
        ("blob", {"kl_period": "weekly"}, "method.kl_period"),
        ("blob", {"optimization": "lbfgs"}, "method.optimization"),
        ("blob", {"std_parameterization": "exp"}, "method.std_parameterization"),
        ("blob", {"mean_weight_decay": -1.0}, "method.mean_weight_decay"),
        ("inducing", {"mean_weight_decay": -1.0}, "method.mean_weight_decay"),
        ("blob", {"eps": -0.1, "std_parameterization": "square"}, "method.eps"),
        ("blob_laplace", {"beta": 0}, "method.beta"),
        ("map", {"weight_decay": 0}, "method.weight_decay"),
        ("blob", {"temperature": 1.0}, "method.temperature"),
        ("mle", {"beta": 0.2}, "method.beta"),
    ],
)
def test_invalid_values_name_the_field(name, overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_method(name, **overrides)


def test_unknown_method_name():
    with pytest.raises(ConfigError, match=r"method\.name.*bayes_by_magic"):
        build_method("bayes_by_magic")


def test_enum_values_are_normalised():
    cfg = build_method("blob", kl_schedule="UNIFORM", kl_period="Epoch", optimization="ELBO").config
    assert (cfg.kl_schedule, cfg.kl_period, cfg.optimization) == ("uniform", "epoch", "elbo")
