"""bayespeft: uncertainty-aware parameter-efficient fine-tuning of language models.

The core is BLoB (Bayesian LoRA by backpropagation); MLE/MAP LoRA and BLoB with Laplace noise
share its method interface, task interface, posterior-predictive rule and run layout.

Every command of the ``bayespeft`` command line is a function here with the same name and
arguments (``bayespeft.train(config, output_dir)`` is ``bayespeft train -c CONFIG -o DIR``), and
:func:`load_config` composes configs exactly as the commands do.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import BayesPeftError, ConfigError, DataError, NumericalError, RunDirError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import RunConfig, load_config
    from .experiments.compare import compare
    from .experiments.report import report
    from .experiments.sweep import sweep
    from .experiments.tune import tune
    from .integrations import BayesianTrainer, wrap
    from .methods import Method, build_method, method_names
    from .predictive import posterior_predictive
    from .pretrained import BayesianPeftModel
    from .sampling.sample import sample
    from .sampling.score import score
    from .sampling.stores import export_store, merge_stores, salvage_store, store_info
    from .workflows.calibrate import calibrate
    from .workflows.evaluate import evaluate
    from .workflows.ood import ood
    from .workflows.train import train

#: Public name -> the module that defines it, imported on first use (``import bayespeft`` stays light).
_LAZY = {
    "RunConfig": "config",
    "load_config": "config",
    "compare": "experiments.compare",
    "report": "experiments.report",
    "sweep": "experiments.sweep",
    "tune": "experiments.tune",
    "BayesianTrainer": "integrations",
    "wrap": "integrations",
    "Method": "methods",
    "build_method": "methods",
    "method_names": "methods",
    "posterior_predictive": "predictive",
    "BayesianPeftModel": "pretrained",
    "sample": "sampling.sample",
    "score": "sampling.score",
    "export_store": "sampling.stores",
    "merge_stores": "sampling.stores",
    "salvage_store": "sampling.stores",
    "store_info": "sampling.stores",
    "calibrate": "workflows.calibrate",
    "evaluate": "workflows.evaluate",
    "ood": "workflows.ood",
    "train": "workflows.train",
}

__all__ = [
    "BayesPeftError",
    "BayesianPeftModel",
    "BayesianTrainer",
    "ConfigError",
    "DataError",
    "Method",
    "NumericalError",
    "RunConfig",
    "RunDirError",
    "__version__",
    "build_method",
    "calibrate",
    "compare",
    "evaluate",
    "export_store",
    "load_config",
    "merge_stores",
    "method_names",
    "ood",
    "posterior_predictive",
    "report",
    "salvage_store",
    "sample",
    "score",
    "store_info",
    "sweep",
    "train",
    "tune",
    "wrap",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
