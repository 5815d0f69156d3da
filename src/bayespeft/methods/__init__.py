"""Methods: one interface, each a small class registered by name (see :mod:`.base`)."""

from .base import (
    Method,
    Optimization,
    SamplingState,
    TrainingContext,
    build_method,
    method_class,
    method_config_class,
    method_names,
    read_method_file,
    register_method,
)
from .bbb import BbbConfig, BbbLora
from .blob import BlobConfig, BlobLaplaceConfig, BlobLaplaceLora, BlobLora
from .ensemble import EnsembleConfig, EnsembleLora
from .inducing import InducingConfig, InducingLora
from .laplace import LaplaceConfig, LaplaceLora
from .lora import MapConfig, MapLora, MleConfig, MleLora
from .mcdropout import McDropoutConfig, McDropoutLora
from .tfb import TfbConfig, TfbLora
from .weight_noise import WeightNoise, WeightNoiseConfig

__all__ = [
    "BbbConfig",
    "BbbLora",
    "BlobConfig",
    "BlobLaplaceConfig",
    "BlobLaplaceLora",
    "BlobLora",
    "EnsembleConfig",
    "EnsembleLora",
    "InducingConfig",
    "InducingLora",
    "LaplaceConfig",
    "LaplaceLora",
    "MapConfig",
    "MapLora",
    "McDropoutConfig",
    "McDropoutLora",
    "Method",
    "MleConfig",
    "MleLora",
    "Optimization",
    "SamplingState",
    "TfbConfig",
    "TfbLora",
    "TrainingContext",
    "WeightNoise",
    "WeightNoiseConfig",
    "build_method",
    "method_class",
    "method_config_class",
    "method_names",
    "read_method_file",
    "register_method",
]
