"""Tiny models for the method tests: a random 2-layer Llama and a single peft-wrapped Linear."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from bayespeft.config import LoraSettings
from bayespeft.methods import build_method

TARGETS = ["q_proj", "v_proj", "lm_head"]
LORA = LoraSettings(r=4, alpha=8)


def tiny_llama(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


def randomize_lora(model: nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    """Nonzero B (and a random A mean) so the posterior noise reaches the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def injected(method_name: str = "blob", seed: int = 0, randomize: bool = True, **overrides):
    """(method, peft model) for a tiny Llama with LoRA on q, v and lm_head."""
    method = build_method(method_name, **overrides)
    model = method.inject(tiny_llama(seed), LORA, TARGETS, "CAUSAL_LM")
    if randomize:
        randomize_lora(model)
    return method, model


class OneLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def linear_layer(method_name: str = "blob", d_in: int = 8, d_out: int = 4, r: int = 4, alpha: float = 8, **overrides):
    """(method, peft model, LoRA layer) wrapping a single nn.Linear named ``proj``."""
    torch.manual_seed(0)
    method = build_method(method_name, **overrides)
    model = method.inject(OneLinear(d_in, d_out), LoraSettings(r=r, alpha=alpha), ["proj"], None)
    return method, model, model.base_model.model.proj


def token_ids(batch: int = 2, length: int = 6, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))
