"""A peft-like handle on the full Bayesian model: ``from_pretrained`` / ``save_pretrained`` /
``push_to_hub``, sampling with ``with model.sampling(...)``, forward and ``generate``.

Plain peft loads an adapter's posterior mean; this class loads the whole posterior (variances,
members, curvature) from the same folder, with no run directory or config.yaml.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import HfApi, snapshot_download
from peft import PeftModel
from safetensors import safe_open
from torch import nn

from .backbones import FRESH_MODULES
from .checkpoint import read_json
from .config import LoraSettings
from .errors import RunDirError
from .methods import Method, build_method, method_class, read_method_file
from .methods.base import ADAPTER_CONFIG

#: The transformers auto class of each peft task type (None: a sequence classifier).
AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    None: "AutoModelForSequenceClassification",
}
HEAD_SUFFIX = ".base_layer"  # how a LoRA-adapted fresh module is named in modules_to_save
CARD_FILE = "README.md"


class BayesianPeftModel(nn.Module):
    """A backbone with a bayespeft adapter: call it like the peft model, sample inside :meth:`sampling`."""

    def __init__(self, peft_model: PeftModel, method: Method, card: str | None = None) -> None:
        super().__init__()
        self.peft_model, self.method, self.card = peft_model, method, card

    # ---- use --------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.peft_model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """peft's generate; inside ``sampling(hold=True, ...)`` every sequence keeps one posterior draw."""
        return self.peft_model.generate(*args, **kwargs)

    @contextlib.contextmanager
    def sampling(self, enabled: bool = True, seed: int | None = None, **kwargs: Any) -> Iterator[None]:
        """Draw weights from the posterior (``enabled``, reproducible with ``seed``) or use its mean."""
        with self.method.sampling(enabled=enabled, seed=seed, **kwargs):
            yield

    @torch.no_grad()
    def predict_proba(self, n_samples: int = 0, seed: int | None = None, **inputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities averaged over ``n_samples`` posterior draws (0: the posterior mean's)."""
        draws = self.method.num_draws(n_samples)
        with self.sampling(enabled=n_samples > 0, seed=seed):
            probs = [self.peft_model(**inputs).logits.float().softmax(-1) for _ in range(draws)]
        return torch.stack(probs).mean(0)

    # ---- persistence ------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the full adapter (peft's files, the method file, any posterior files) and the model card."""
        directory = self.method.save_adapter(self.peft_model, save_directory)
        if self.card is not None:
            (directory / CARD_FILE).write_text(self.card)
        return directory

    @classmethod
    def from_pretrained(
        cls, base: str | nn.Module, adapter: str | Path, *, revision: str | None = None, **base_kwargs: Any
    ) -> BayesianPeftModel:
        """Load ``adapter`` (a folder or a hub repo id) onto ``base`` (a model, hub id or folder).

        A sequence classifier's base is built with the label count of the head saved in the adapter;
        ``base_kwargs`` go to the base model's ``from_pretrained`` (e.g. ``dtype``).
        """
        folder = _adapter_folder(adapter, revision)
        peft_config = read_json(folder / ADAPTER_CONFIG)
        saved = read_method_file(folder)
        method = _method(saved, folder)
        if isinstance(base, str):
            base = _load_base(base, peft_config, folder, base_kwargs)
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        saved_modules = peft_config.get("modules_to_save") or []
        setattr(base, FRESH_MODULES, [m.removesuffix(HEAD_SUFFIX) for m in saved_modules])
        lora = LoraSettings(r=peft_config["r"], alpha=peft_config["lora_alpha"], dropout=peft_config["lora_dropout"])
        targets = peft_config["target_modules"]
        targets = [targets] if isinstance(targets, str) else sorted(targets)
        peft_model = method.inject(base, lora, targets, peft_config.get("task_type"))
        method.load_adapter(peft_model, folder)
        card = folder / CARD_FILE
        return cls(peft_model.eval(), method, card.read_text() if card.is_file() else None)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        tags: list[str] | None = None,
    ) -> Any:
        """Upload the full adapter to the hub, with peft's (transformers') push_to_hub arguments."""
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(tmp)
            if tags and (folder / CARD_FILE).is_file():
                card = (folder / CARD_FILE).read_text()
                (folder / CARD_FILE).write_text(card.replace("tags: [", f"tags: [{', '.join(tags)}, ", 1))
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                commit_message=commit_message or f"Upload {self.method.name} adapter",
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )


def _adapter_folder(adapter: str | Path, revision: str | None) -> Path:
    """A local adapter folder, downloading a hub repo id first."""
    folder = Path(adapter)
    if folder.is_dir():
        return folder
    if isinstance(adapter, Path) or folder.is_absolute() or str(adapter).startswith("."):
        raise RunDirError(f"{folder}: no such adapter folder")
    return Path(snapshot_download(repo_id=str(adapter), revision=revision))


def _method(saved: dict[str, Any], folder: Path) -> Method:
    """The method named in the method file; post-hoc methods take their LoRA from this folder itself."""
    fields = dict(saved.get("config") or {})
    if "source_adapter" in fields:
        fields["source_adapter"] = str(folder)
    known = method_class(saved["method"]).config_class.__dataclass_fields__
    return build_method(saved["method"], **{k: v for k, v in fields.items() if k in known})


def _load_base(name: str, peft_config: dict[str, Any], folder: Path, kwargs: dict[str, Any]) -> nn.Module:
    """The base model by hub id or folder, with the auto class of the adapter's task type."""
    auto = getattr(transformers, AUTO_CLASSES.get(peft_config.get("task_type"), AUTO_CLASSES[None]))
    if peft_config.get("task_type") is None and "num_labels" not in kwargs:
        with safe_open(folder / "adapter_model.safetensors", "pt") as weights:
            heads = sorted(k for k in weights.keys() if k.endswith(f"{HEAD_SUFFIX}.weight"))  # noqa: SIM118
            if heads:  # the last head layer (e.g. out_proj after dense) maps to the labels
                kwargs = {**kwargs, "num_labels": weights.get_slice(heads[-1]).get_shape()[0]}
    return auto.from_pretrained(name, **kwargs)
