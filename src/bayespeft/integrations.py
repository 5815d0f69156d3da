"""transformers.Trainer integration: an existing Trainer script gains any trainable bayespeft method with

    model = bayespeft.wrap(model, "blob")                      # LoRA + the method's posterior
    trainer = bayespeft.BayesianTrainer(model=model, args=args, train_dataset=..., ...)   # was Trainer(...)
    model.save_pretrained("out/adapter")                       # the full Bayesian adapter

The method's own update rule owns each optimiser step (the KL term with its schedule, BLoB's second
optimiser, the learning-rate schedule), so training matches bayespeft's loop; evaluation averages
``eval_n_samples`` posterior draws (0: the posterior mean).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer

from .backbones import lora_targets
from .config import LoraSettings, ModelConfig, TrainConfig
from .methods import Method, Optimization, TrainingContext, build_method
from .pretrained import BayesianPeftModel


def wrap(
    model: PreTrainedModel,
    method: str | Method = "blob",
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
    **method_options: Any,
) -> BayesianPeftModel:
    """Freeze ``model`` and inject the method's LoRA (default targets by architecture)."""
    method = build_method(method, **method_options) if isinstance(method, str) else method
    lora = LoraSettings(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)
    lora.validate()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    targets = lora_targets(model, ModelConfig(name=model.name_or_path or "model", lora=lora))
    if model.config.is_encoder_decoder:
        task_type = "SEQ_2_SEQ_LM"
    elif type(model).__name__.endswith("ForCausalLM"):
        task_type = "CAUSAL_LM"
    else:
        task_type = None
    return BayesianPeftModel(method.inject(model, lora, targets, task_type), method)


class MethodStep(torch.optim.Optimizer):
    """The optimiser Trainer steps: it hands each step to the method's rule (after Trainer's backward
    and clipping), which adds its KL term and steps every optimiser and scheduler it built."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__(params, {"lr": 0.0})
        self.rule: Optimization | None = None
        self.record: dict[str, float] = {}

    def bind(self, rule: Optimization) -> None:
        """Take over the rule; the learning rates Trainer logs are its main optimiser's."""
        self.rule = rule
        self.param_groups = next(iter(rule.optimizers.values())).param_groups

    def step(self, closure: Any = None) -> None:
        nothing = torch.zeros((), requires_grad=True)  # the NLL gradients are already in .grad
        self.record = self.rule.step(nothing, lambda loss: loss.backward())

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.rule.optimizers.values() if self.rule else []:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        if self.rule is None:
            return super().state_dict()
        return {
            "optimizers": {k: o.state_dict() for k, o in self.rule.optimizers.items()},
            "rule": self.rule.state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.rule is None or "optimizers" not in state_dict:
            return
        for name, optimizer in self.rule.optimizers.items():
            optimizer.load_state_dict(state_dict["optimizers"][name])
        self.rule.load_state(state_dict["rule"])


class RuleSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Trainer's scheduler: the rule already stepped its schedulers, so step() only reports the rate."""

    def __init__(self, step_owner: MethodStep) -> None:  # no LRScheduler.__init__: it would step the rates
        self.owner = self.optimizer = step_owner

    def step(self, epoch: int | None = None) -> None:
        """Nothing to do: the method's rule stepped its schedulers with the optimisers."""

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.owner.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {k: s.state_dict() for k, s in self.owner.rule.schedulers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, scheduler in self.owner.rule.schedulers.items():
            scheduler.load_state_dict(state_dict[name])


class BayesianTrainer(Trainer):
    """transformers.Trainer for a :func:`wrap`-ped model: method-aware loss, optimiser steps and evaluation."""

    def __init__(self, model: BayesianPeftModel, *args: Any, eval_n_samples: int = 0, **kwargs: Any) -> None:
        if not isinstance(model, BayesianPeftModel):
            raise TypeError("BayesianTrainer: model must come from bayespeft.wrap (or BayesianPeftModel)")
        self.bayesian, self.eval_n_samples = model, eval_n_samples
        self.step_owner: MethodStep | None = None
        super().__init__(model.peft_model, *args, **kwargs)
        self.model_accepts_loss_kwargs = False  # Trainer scales the mean loss by the accumulation steps

    @property
    def method(self) -> Method:
        return self.bayesian.method

    # ---- optimisation ------------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.step_owner = MethodStep([p for p in self.model.parameters() if p.requires_grad])
            self.optimizer = self.step_owner  # accelerate wraps self.optimizer; step_owner stays ours
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None:
            self.create_optimizer()
            owner = self.step_owner
            args, size = self.args, len(self.train_dataset)
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
            train = TrainConfig(
                lr=args.learning_rate,
                max_steps=num_training_steps,
                warmup_ratio=min(args.get_warmup_steps(num_training_steps) / max(1, num_training_steps), 0.99),
                adam_eps=args.adam_epsilon,
                weight_decay=args.weight_decay,
                max_grad_norm=None,  # Trainer clips (args.max_grad_norm) before the step
            )
            context = TrainingContext(
                num_examples=size,
                batch_size=per_step,
                batches_per_epoch=max(1, size // (per_step * args.world_size)),
                total_steps=num_training_steps,
                num_processes=args.world_size,
            )
            owner.bind(self.method.build_optimization(self.model, train, context))
            self.lr_scheduler = RuleSchedule(owner)
        return self.lr_scheduler

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The NLL of the batch under one weight draw per copy (ensemble members: one copy each)."""
        groups = self.method.train_groups
        if groups > 1:
            inputs = {k: v.repeat(groups, *[1] * (v.dim() - 1)) if torch.is_tensor(v) else v for k, v in inputs.items()}
        with self.method.sampling(enabled=True, groups=groups):
            outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Trainer's logs plus the rule's last step (kl, pi, weighted_kl) while training."""
        record = self.step_owner.record if self.step_owner is not None else {}
        if "loss" in logs:
            logs = {**logs, **{k: v for k, v in record.items() if k not in ("nll", "neg_elbo", "lr")}}
        super().log(logs, *args, **kwargs)

    # ---- evaluation --------------------------------------------------------------------------------
    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Logits of the posterior predictive: log of the mean probability over ``eval_n_samples`` draws."""
        labels = inputs.get("labels")
        draws = self.method.num_draws(self.eval_n_samples)
        probs = []
        with torch.no_grad(), self.method.sampling(enabled=self.eval_n_samples > 0):
            for _ in range(draws):
                probs.append(model(**inputs).logits.float().softmax(-1))
        logits = torch.stack(probs).mean(0).clamp_min(1e-12).log()
        loss = None
        if labels is not None:
            scored, targets = logits, labels
            if logits.dim() == 3 and not model.config.is_encoder_decoder:  # causal LM: token t predicts t + 1
                scored, targets = logits[:, :-1], labels[:, 1:]
            loss = nn.functional.nll_loss(scored.flatten(0, -2), targets.flatten(), ignore_index=-100)
        return loss, (None if prediction_loss_only else logits), labels
