"""bayespeft: uncertainty-aware parameter-efficient fine-tuning of language models.

The core is BLoB (Bayesian LoRA by backpropagation); MLE/MAP LoRA and BLoB with Laplace noise
share its method interface, task interface, posterior-predictive rule and run layout.
"""

__version__ = "0.1.0"

from .config import RunConfig, load_config
from .errors import BayesPeftError, ConfigError, DataError, NumericalError, RunDirError
from .integrations import BayesianTrainer, wrap
from .methods import Method, build_method, method_names
from .predictive import posterior_predictive
from .pretrained import BayesianPeftModel

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
    "load_config",
    "method_names",
    "posterior_predictive",
    "wrap",
]
