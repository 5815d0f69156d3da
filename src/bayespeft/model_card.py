"""The model card (README.md) written into an adapter folder: what was trained, on what, how well,
and how to load and sample it, so that a folder shared on the hub explains itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backbones import hub_id
from .checkpoint import write_text_atomic
from .config import RunConfig
from .methods import Method

CARD_FILE = "README.md"
#: Scores the card's table lists when the evaluation has them, in this order.
CARD_SCORES = ("acc", "ece", "nll", "brier", "auroc", "token_nll", "perplexity", "sequence_nll", "num_samples")


def posterior_line(method: Method) -> str:
    """One line on the posterior the adapter holds: the method's own summary, and whether it samples."""
    summary = (type(method).__doc__ or method.name).strip().splitlines()[0]
    kind = "stochastic: forward passes draw weights" if method.stochastic else "deterministic: one set of weights"
    return f"{summary} ({kind})"


def model_card(config: RunConfig, method: Method, summary: dict[str, Any]) -> str:
    """The card's markdown: hub metadata, then method, posterior, data, metrics and usage."""
    base = hub_id(config.model)
    scores = summary.get("metrics", {})
    rows = "\n".join(f"| {name} | {scores[name]:.4g} |" for name in CARD_SCORES if name in scores)
    return f"""---
library_name: peft
base_model: {base}
tags: [bayespeft, {method.name}, lora, uncertainty]
---

# {method.name} LoRA adapter for {base}

- **Method:** `{method.name}` ({", ".join(f"{k}={v}" for k, v in vars(method.config).items())})
- **Posterior:** {posterior_line(method)}
- **Data:** `{config.data.dataset}`, trained on `{config.data.train_split}` ({config.train.max_steps} optimiser
  steps of {config.train.batch_size * config.train.gradient_accumulation_steps} examples, seed {config.train.seed}),
  evaluated on `{summary.get("split", config.data.eval_split)}`
- **Evaluation:** {config.eval.n_samples} posterior samples (0 = the posterior mean)

| metric | value |
|---|---|
{rows}

## Use

Plain peft loads the posterior mean (a classification head the base model lacks travels with the adapter):

```python
from peft import PeftModel
model = PeftModel.from_pretrained(base_model, "path/to/adapter")
```

Sampling the posterior needs bayespeft:

```python
from bayespeft import BayesianPeftModel
model = BayesianPeftModel.from_pretrained("{base}", "path/to/adapter")
with model.sampling(seed=0):  # one posterior draw; model.sampling(enabled=False) gives the mean
    outputs = model(**inputs)
```
"""


def write_model_card(directory: str | Path, config: RunConfig, method: Method, summary: dict[str, Any]) -> Path:
    """Write README.md into the adapter folder (atomically) and return its path."""
    path = Path(directory) / CARD_FILE
    write_text_atomic(path, model_card(config, method, summary))
    return path
