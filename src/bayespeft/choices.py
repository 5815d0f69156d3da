"""The words and defaults the command line offers, in a module that imports nothing heavy.

The commands build their parsers from these (flag choices, defaults, help text) without importing
torch, transformers or peft, so that ``bayespeft --help`` answers at once; the API modules that
act on them take them from here, so each is defined once.
"""

from __future__ import annotations

__all__ = [
    "BUILTIN_METHODS",
    "CLUSTERINGS",
    "COMPARE_METRICS",
    "CORRECTNESS_JUDGES",
    "DEFAULT_GROUP_BY",
    "EXPORT_FORMATS",
    "GROUP_FIELDS",
    "REFERENCE_AGGREGATES",
    "REPORT_METRICS",
    "TEMPERATURE",
]

#: The methods bayespeft registers itself (``bayespeft.method_names()`` adds any a user registers).
BUILTIN_METHODS = (
    "bbb",
    "blob",
    "blob_laplace",
    "ensemble",
    "inducing",
    "laplace",
    "map",
    "mcdropout",
    "mle",
    "noise",
    "tfb",
)
#: The pseudo-method of a temperature-scaled MLE run in a comparison.
TEMPERATURE = "temperature"
#: Metrics of a comparison's tables and figure unless --metrics says otherwise.
COMPARE_METRICS = ("acc", "ece", "nll")
#: Metrics of ``bayespeft report`` unless --metrics says otherwise.
REPORT_METRICS = ("acc", "ece", "nll", "brier")
#: Fields a result can be grouped on (``seed`` is what is averaged over).
GROUP_FIELDS = ("method", "model", "dataset", "split", "n_samples")
DEFAULT_GROUP_BY = ("dataset", "method", "n_samples")
#: Formats a sample store can be exported to.
EXPORT_FORMATS = ("jsonl", "parquet")
#: How a generated answer is judged correct.
CORRECTNESS_JUDGES = ("em", "f1", "nli", "llm")
#: How sampled answers are grouped into meaning classes for semantic entropy.
CLUSTERINGS = ("nli", "embedding")
#: How the scores against several references of one example are summarised, in key order.
REFERENCE_AGGREGATES = ("max", "mean", "min")
