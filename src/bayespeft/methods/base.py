"""The method interface every (Bayesian) LoRA method implements, and its registry.

A method injects its adapters into a backbone, says whether forward passes are stochastic,
switches sampling on or off (seedable, per call), gives its KL term, builds its optimisers,
and saves, loads and merges its adapter. Methods are small classes registered by name and
built through :func:`build_method` (a string-keyed factory).
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import LoraVariant
from torch import nn

from ..backbones import FRESH_MODULES
from ..checkpoint import load_tensors, read_json, save_tensors_atomic, write_json_atomic
from ..config import LoraSettings, MethodConfig, TrainConfig, method_config_class, register_method_config
from ..errors import ConfigError, NumericalError, RunDirError
from ..predictive import sample_probabilities

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
METHOD_FILE = "bayespeft_method.json"


@dataclass
class SamplingState:
    """Shared by every Bayesian layer of one model: whether to draw weights, and how many.

    ``groups`` > 1 means the batch holds ``groups`` stacked copies of the inputs (sample-major),
    each of which must see its own independent weight draw: N posterior samples in one pass.
    """

    enabled: bool = True
    groups: int = 1
    offset: int = 0  # index of the first stacked draw (ensemble members are drawn in turn)
    hold: bool = False  # keep each group's draw for every forward pass of the block (generation)
    seed: int = 0  # base seed of held draws
    block: int = 0  # counts held blocks, so layers know when their cached draw is stale
    draws: dict[tuple[int, str], torch.Tensor] | None = None  # this block's noise by (layer id, tag); None outside


LAYER_KEY = "bayespeft_key"


def held_noise(
    state: SamplingState,
    layer: nn.Module,
    tag: str,
    shape: tuple[int, ...],
    like: torch.Tensor,
    sampler: Callable[[tuple[int, ...], torch.Generator], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Noise [groups, *shape] of one layer, drawn once per held block and reused by every pass in it.

    Draw g comes from a generator seeded by (block seed, layer name, ``tag``, offset + g), so it
    does not depend on how many draws are stacked: S draws generated together equal S one-at-a-time
    draws with offsets 0..S-1. ``sampler`` defaults to standard Gaussian noise.
    """
    cache = layer.__dict__.setdefault("_bayespeft_held", {})
    hit = cache.get(tag)
    if hit is not None and hit[0] == (state.block, state.groups, state.offset):
        return hit[1]
    sampler = sampler or (lambda size, generator: torch.randn(size, generator=generator))
    key = getattr(layer, LAYER_KEY, 0)
    draws = []
    for group in range(state.offset, state.offset + state.groups):
        generator = torch.Generator().manual_seed(zlib.crc32(f"{state.seed}/{key}/{tag}/{group}".encode()))
        draws.append(sampler(shape, generator))
    noise = torch.stack(draws).to(device=like.device, dtype=like.dtype)
    cache[tag] = ((state.block, state.groups, state.offset), noise)
    return noise


def block_noise(state: SamplingState, layer: nn.Module, tag: str, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One layer's fresh noise ``draw()``, shared by every forward pass of the current sampling block.

    A pass split in two calls (a cached question stem, then its choices) must see one posterior
    draw per group, as the single call it replaces; so inside a :meth:`Method.sampling` block the
    first pass draws and later passes reuse; the draws are dropped when the block ends. Outside
    any block every pass draws anew. Flipout's per-token signs are not part of the draw: they
    stay fresh per pass, as they are per token.
    """
    if state.draws is None:
        return draw()
    key = (id(layer), tag)
    if key not in state.draws:
        state.draws[key] = draw()
    return state.draws[key]


class MeanMergeVariant(LoraVariant):
    """A peft LoRA variant whose merge folds in the posterior-mean delta; the method adds its state in after_inject."""

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs: Any) -> None:
        """Nothing to do at peft's init: the method's tensors are added by its ``after_inject``."""

    @staticmethod
    def mean_delta(module: LoraLayer, adapter: str) -> torch.Tensor:
        """The delta weight of the posterior mean (plain LoRA's s B A unless a method stores its factors elsewhere)."""
        return module.get_delta_weight(adapter)

    @classmethod
    def merge_safe(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + cls.mean_delta(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def merge_unsafe(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += cls.mean_delta(module, active_adapter).to(orig_weight.dtype)

    @classmethod
    def unmerge(cls, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - cls.mean_delta(module, active_adapter).to(orig_weight.dtype)


def split_groups(x: torch.Tensor, groups: int, what: str = "posterior samples") -> torch.Tensor:
    """View rows [groups * n, ...] as [groups, n * ..., d] (sample-major: group g is a contiguous block)."""
    if x.shape[0] % groups:
        raise ValueError(f"batch of {x.shape[0]} rows cannot hold {groups} stacked {what}")
    return x.reshape(groups, -1, x.shape[-1])


@dataclass
class TrainingContext:
    """Facts about the run that optimisers and KL schedules need."""

    num_examples: int
    batch_size: int
    batches_per_epoch: int
    total_steps: int
    num_processes: int = 1


@dataclass
class Optimization:
    """Optimisers, schedulers and the per-step update rule of one method."""

    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    max_grad_norm: float | None = None
    step_count: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def step(self, nll: torch.Tensor, backward) -> dict[str, float]:
        """One update on the NLL: backward, optional clipping, optimiser and scheduler steps."""
        self.step_count += 1
        backward(nll)
        (name, optimizer), *_ = self.optimizers.items()
        self._clip(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.schedulers[name].step()
        return {"nll": float(nll.detach()), "lr": optimizer.param_groups[0]["lr"]}

    def _clip(self, optimizer: torch.optim.Optimizer) -> None:
        if self.max_grad_norm is not None:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)

    def state(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up from 0 over warmup_ratio * T steps, then linear decay to 0 at step T."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Method:
    """Plain LoRA behaviour; Bayesian methods override the hooks they need."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    stochastic: ClassVar[bool] = False  # do two forward passes with sampling on differ?
    train_groups: int = 1  # input copies per training batch, each with its own draw (ensemble members)

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.config.validate()
        self.sampling_state = SamplingState()

    # ---- injection -------------------------------------------------------------------------
    def lora_config(self, lora: LoraSettings, target_modules: list[str], task_type: str | None) -> LoraConfig:
        return LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=target_modules,
            task_type=task_type,
        )

    def inject(
        self, model: nn.Module, lora: LoraSettings, target_modules: list[str], task_type: str | None = None
    ) -> PeftModel:
        """Wrap ``model`` with LoRA on ``target_modules`` and add this method's adapter state.

        Modules the backbone's checkpoint lacked (a new classification head) become peft's frozen
        ``modules_to_save``, so the saved adapter carries them and plain peft rebuilds the same model.
        """
        config = self.lora_config(lora, target_modules, task_type)
        saved = [_saved_module(name, target_modules) for name in getattr(model, FRESH_MODULES, [])]
        config.modules_to_save = saved or None
        peft_model = get_peft_model(model, config)
        for name, parameter in peft_model.named_parameters():
            if ".modules_to_save." in name:
                parameter.requires_grad_(False)  # kept as loaded: the head adapts through its LoRA branch
        self.after_inject(peft_model)
        name_layers(peft_model)
        return peft_model

    def after_inject(self, model: PeftModel) -> None:
        """Add method-specific parameters to the injected LoRA layers (none for plain LoRA)."""

    # ---- inference ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def sampling(
        self,
        enabled: bool = True,
        seed: int | None = None,
        groups: int = 1,
        offset: int = 0,
        hold: bool = False,
    ) -> Iterator[None]:
        """Draw weights from the posterior (``enabled``) or use its mean, within the block.

        ``seed`` makes the draws reproducible without touching the caller's RNG stream;
        ``groups`` stacks that many independent draws along the batch (sample-major); ``offset``
        numbers them from there (for methods whose draws are distinct members). ``hold`` keeps
        one weight draw per group for every forward pass in the block, as generation needs (one
        sample per sequence, not per decoding step); held draw g depends only on the seed and
        offset + g (see :func:`held_noise`). Without ``hold``, the block is still one draw per group:
        passes after the first reuse its noise (:func:`block_noise`).
        """
        state = self.sampling_state
        previous = (state.enabled, state.groups, state.offset, state.hold, state.seed, state.draws)
        held_seed = seed if seed is not None else int(torch.randint(0, 2**62, ()).item()) if hold else state.seed
        state.enabled, state.groups, state.offset, state.hold, state.seed = enabled, groups, offset, hold, held_seed
        state.draws = {}
        state.block += 1
        try:
            if seed is None:
                yield
            else:
                # manual_seed also reseeds every CUDA device: fork (and restore) those streams too
                cuda_devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
                with torch.random.fork_rng(devices=cuda_devices):
                    torch.manual_seed(seed)
                    yield
        finally:
            state.enabled, state.groups, state.offset, state.hold, state.seed, state.draws = previous
            state.block += 1

    def num_draws(self, n_samples: int) -> int:
        """Forward draws an evaluation with N samples needs: 1 for the mean or a deterministic method."""
        return 1 if n_samples == 0 or not self.stochastic else n_samples

    def predictive_samples(
        self, model: nn.Module, task: Any, batch: dict[str, torch.Tensor], n_samples: int, samples_per_pass: int
    ) -> torch.Tensor:
        """Per-draw class probabilities [B, S, C] for one batch.

        Up to ``samples_per_pass`` draws are stacked along the batch in one forward call, each
        stacked copy with its own weight draw. Call inside :meth:`sampling` (which sets the mode).
        """
        n_draws = self.num_draws(n_samples)
        sampling = self.sampling_state.enabled and n_samples > 0
        size = batch["labels"].shape[0]
        draws, done = [], 0
        while done < n_draws:
            stack = min(n_draws - done, samples_per_pass)
            with self.sampling(enabled=sampling, groups=stack, offset=done):
                logits = task.class_logits(model, batch, repeats=stack)
            draws.append(sample_probabilities(logits).view(stack, size, -1))
            done += stack
        return torch.cat(draws).transpose(0, 1)

    def fit_posthoc(
        self,
        model: nn.Module,
        task: Any,
        train_examples: list,
        config: Any,
        accelerator: Any,
        unseen: Callable[[int], list] | None = None,
    ) -> dict:
        """Post-hoc fitting after (or instead of) training, e.g. curvature or a noise scale.

        ``unseen(n)`` gives up to ``n`` examples of the training split that training never used (None when
        the whole split trained). Returns facts to record in ``metrics.json`` (none for methods trained by
        gradient descent).
        """
        return {}

    def kl(self, model: nn.Module) -> torch.Tensor | None:
        """The KL divergence of the posterior from the prior (None for non-variational methods)."""
        return None

    # ---- training -------------------------------------------------------------------------------
    def weight_decay(self, train: TrainConfig) -> float:
        return train.weight_decay

    def build_optimization(self, model: nn.Module, train: TrainConfig, context: TrainingContext) -> Optimization:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=train.lr, eps=train.adam_eps, weight_decay=self.weight_decay(train))
        scheduler = linear_schedule(optimizer, context.total_steps, train.warmup_ratio)
        return Optimization({"main": optimizer}, {"main": scheduler}, train.max_grad_norm)

    # ---- persistence ---------------------------------------------------------------------------
    def adapter_state(self, model: PeftModel) -> dict[str, torch.Tensor]:
        """Every adapter tensor (means and variances), keyed as in peft's saved adapters."""
        return {
            k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(unwrap_peft(model), save_embedding_layers=False).items()
        }

    def save_adapter(self, model: PeftModel, directory: str | Path, mean_only: bool = False) -> Path:
        """Write peft's format (adapter_config.json + adapter_model.safetensors) plus the method file.

        ``mean_only`` drops the variance tensors so that the folder is a plain peft LoRA holding
        the posterior mean.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        peft_model = unwrap_peft(model)
        peft_config = peft_model.peft_config["default"]
        peft_config.save_pretrained(str(directory))
        tensors = self.adapter_state(peft_model)
        saved_modules = peft_config.modules_to_save or []
        if mean_only:
            tensors = {k: v for k, v in tensors.items() if is_plain_lora_key(k) or _in_modules(k, saved_modules)}
        elif any(not (is_plain_lora_key(k) or _in_modules(k, saved_modules)) for k in tensors):
            _mark_posterior(directory / ADAPTER_CONFIG, self.name)
        save_tensors_atomic(directory / ADAPTER_WEIGHTS, tensors, metadata={"format": "pt"})
        write_json_atomic(
            directory / METHOD_FILE,
            {"method": self.name, "config": asdict(self.config), "mean_only": mean_only},
        )
        return directory

    def load_adapter(self, model: PeftModel, directory: str | Path) -> None:
        """Load an adapter saved by :meth:`save_adapter` (means and variances) into ``model``."""
        directory = Path(directory)
        tensors = load_tensors(directory / ADAPTER_WEIGHTS)
        peft_model = unwrap_peft(model)
        expected = set(self.adapter_state(peft_model))
        # adapters saved before heads travelled with them rebuild the head from train.seed instead
        older = [
            k for k in expected - set(tensors) if _in_modules(k, peft_model.peft_config["default"].modules_to_save)
        ]
        expected -= set(older)
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise RunDirError(
                f"{directory / ADAPTER_WEIGHTS}: adapter does not match method {self.name!r} and this model "
                f"({what}; {len(missing)} missing, {len(unexpected)} unexpected)"
            )
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise NumericalError(
                    f"{directory / ADAPTER_WEIGHTS}: {name} holds NaN or infinite weights (a diverged run?); "
                    "train it again with a lower train.lr"
                )
        set_peft_model_state_dict(peft_model, tensors)

    def merge(self, model: PeftModel) -> nn.Module:
        """Fold the adapter into the base weights (the posterior mean for Bayesian methods)."""
        if self.stochastic:
            warnings.warn(
                f"merging a {self.name} adapter keeps only the posterior mean: the weight uncertainty is lost "
                "and the merged model is deterministic",
                UserWarning,
                stacklevel=2,
            )
        peft_model = unwrap_peft(model)
        untie_adapted_embeddings(peft_model)
        return peft_model.merge_and_unload()


def name_layers(model: nn.Module) -> None:
    """Tag every LoRA layer with its module name: held draws are seeded by it."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            setattr(module, LAYER_KEY, name)


def untie_adapted_embeddings(model: PeftModel) -> None:
    """Give an adapted LM head its own weight when it is tied to the input embeddings.

    Otherwise merging the head's LoRA delta would also change the token embeddings.
    """
    embeddings = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, LoraLayer) and getattr(module.get_base_layer(), "weight", None) is embeddings:
            base = module.get_base_layer()
            base.weight = nn.Parameter(embeddings.detach().clone(), requires_grad=False)
            model.get_base_model().config.tie_word_embeddings = False


def unwrap_peft(model: nn.Module) -> PeftModel:
    """The PeftModel inside an accelerate/DDP wrapper."""
    while not isinstance(model, PeftModel) and hasattr(model, "module"):
        model = model.module
    if not isinstance(model, PeftModel):
        raise TypeError(f"expected a peft model, got {type(model).__name__}")
    return model


def _saved_module(name: str, target_modules: list[str]) -> str:
    """peft's modules_to_save entry for a fresh module: its base layer when LoRA adapts it too."""
    adapted = any(name == t or name.endswith("." + t) for t in target_modules)
    return f"{name}.base_layer" if adapted else name


def _in_modules(key: str, modules: list[str] | set[str] | None) -> bool:
    """Whether a saved adapter key belongs to one of peft's modules_to_save."""
    return any(f".{module}." in key for module in modules or [])


#: adapter_config.json field that plain peft does not know, so it warns on loading a full posterior.
POSTERIOR_FIELD = "bayespeft_posterior_ignored_by_plain_peft"


def _mark_posterior(config_path: Path, method: str) -> None:
    """Add POSTERIOR_FIELD: peft warns about the unknown field naming it, and still loads the mean."""
    fields = read_json(config_path)
    fields[POSTERIOR_FIELD] = (
        f"{method}: plain peft loads lora_A/lora_B and ignores the posterior tensors; "
        "bayespeft.BayesianPeftModel.from_pretrained loads them to sample"
    )
    write_json_atomic(config_path, fields)


def is_plain_lora_key(key: str) -> bool:
    """Whether an adapter tensor key is one plain peft saves (lora_A/lora_B weight or bias), not a posterior one."""
    return key.endswith(("lora_A.weight", "lora_B.weight", "lora_A.bias", "lora_B.bias"))


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    register_method_config(cls.name, cls.config_class)
    return cls


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    method_config_class(name)  # an unknown name: the ConfigError listing the registered methods
    return _REGISTRY[name.lower()]


def build_method(config: MethodConfig | str, **overrides: Any) -> Method:
    """Factory: ``build_method("blob", beta=0.1)`` or ``build_method(BlobConfig(...))``."""
    if isinstance(config, str):
        cls = method_class(config)
        unknown = set(overrides) - set(cls.config_class.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"method.{sorted(unknown)[0]}: not a parameter of method {cls.name!r}")
        return cls(cls.config_class(**overrides))
    return method_class(config.name)(config)


def read_method_file(directory: str | Path) -> dict[str, Any]:
    """The method name and config stored beside an adapter."""
    path = Path(directory) / METHOD_FILE
    data = read_json(path)
    if not isinstance(data, dict) or "method" not in data:
        raise RunDirError(f"{path}: not a bayespeft method file (no 'method' field)")
    return data


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "METHOD_FILE",
    "MeanMergeVariant",
    "Method",
    "Optimization",
    "SamplingState",
    "TrainingContext",
    "block_noise",
    "build_method",
    "held_noise",
    "is_plain_lora_key",
    "linear_schedule",
    "method_class",
    "method_config_class",
    "method_names",
    "name_layers",
    "read_method_file",
    "register_method",
    "split_groups",
    "untie_adapted_embeddings",
    "unwrap_peft",
]
