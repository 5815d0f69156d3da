"""A trained LoRA as the starting point of a post-hoc method (tfb, laplace, noise)."""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel, set_peft_model_state_dict
from torch import nn

from ..checkpoint import load_tensors
from ..config import LoraSettings
from ..errors import ConfigError, RunDirError
from .base import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Method, is_plain_lora_key


def source_folder(path: str) -> Path:
    """The source adapter folder, checked to hold peft's adapter files."""
    folder = Path(path)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        hint = ""
        if (folder / "adapter" / ADAPTER_WEIGHTS).is_file():
            hint = f" (a run directory? use {folder / 'adapter'})"
        where = weights if folder.is_dir() else folder
        raise RunDirError(f"{where}: method.source_adapter has no trained adapter{hint}")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise RunDirError(f"{folder / ADAPTER_CONFIG}: method.source_adapter lacks its adapter config")
    return folder


def check_source_shape(folder: Path, lora: LoraSettings, target_modules: list[str], method: str) -> None:
    """The run's model.lora (r, alpha, targets) must be the source adapter's."""
    saved = json.loads((folder / ADAPTER_CONFIG).read_text())
    targets = saved.get("target_modules") or []
    targets = {targets} if isinstance(targets, str) else set(targets)
    checks = [
        ("model.lora.r", saved.get("r"), lora.r),
        ("model.lora.alpha", saved.get("lora_alpha"), lora.alpha),
        ("model.lora.target_modules", sorted(targets), sorted(set(target_modules))),
    ]
    for field_name, source, run in checks:
        if source != run:
            raise ConfigError(
                f"{field_name}: must match the source adapter {folder} for {method} "
                f"(source {source!r}, this run {run!r})"
            )


def load_source_lora(method: Method, model: PeftModel, folder: Path) -> None:
    """Load the source adapter's lora_A / lora_B into ``model`` (any variance tensors are ignored)."""
    weights = folder / ADAPTER_WEIGHTS
    tensors = {k: v for k, v in load_tensors(weights).items() if is_plain_lora_key(k)}
    expected = {k: v.shape for k, v in method.adapter_state(model).items() if is_plain_lora_key(k)}
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise RunDirError(f"{weights}: source adapter does not match this model ({what})")
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise RunDirError(
                f"{weights}: {key} has shape {tuple(tensors[key].shape)}, this model expects {tuple(shape)}"
            )
    set_peft_model_state_dict(model, tensors)


class FromSourceAdapter:
    """Mixin for post-hoc methods: inject as the parent method does, then load ``config.source_adapter``."""

    def inject(
        self, model: nn.Module, lora: LoraSettings, target_modules: list[str], task_type: str | None = None
    ) -> PeftModel:
        folder = source_folder(self.config.source_adapter)
        check_source_shape(folder, lora, target_modules, self.name)
        peft_model = super().inject(model, lora, target_modules, task_type)
        load_source_lora(self, peft_model, folder)
        return peft_model
