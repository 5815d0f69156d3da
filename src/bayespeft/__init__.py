"""bayespeft: uncertainty-aware parameter-efficient fine-tuning of language models.

The core is BLoB (Bayesian LoRA by backpropagation); MLE/MAP LoRA and BLoB with Laplace noise
share its method interface, task interface, posterior-predictive rule and run layout.

Every command of the ``bayespeft`` command line is a function here with the same name and
arguments (``bayespeft.train(config, output_dir)`` is ``bayespeft train -c CONFIG -o DIR``), and
:func:`load_config` composes configs exactly as the commands do.
"""

__version__ = "0.1.0"

from .config import RunConfig, load_config
from .errors import BayesPeftError, ConfigError, DataError, NumericalError, RunDirError
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
