"""Shared fixtures: the offline benchmark data and a tiny random causal LM with a real tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"benchmark data not found at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The offline SmolLM2-135M-Instruct, converted once to safetensors."""
    from bayespeft.backbones import resolve_model
    from bayespeft.config import ModelConfig

    path, _ = resolve_model(ModelConfig(name="smollm2-135m"))
    return Path(path)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer: real prompts, millisecond steps."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    target = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def seq2seq_dir(root: Path, smollm2_dir: Path, arch: str) -> Path:
    """A 1+1-layer random BART or T5 saved with SmolLM2's tokenizer (no seq2seq model is available offline)."""
    import torch
    from transformers import (
        AutoTokenizer,
        BartConfig,
        BartForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokens = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.bos_token_id,
    }
    torch.manual_seed(0)
    if arch == "bart":
        config = BartConfig(
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=128,
            bos_token_id=tokenizer.bos_token_id,
            forced_eos_token_id=None,
            **tokens,
        )
        model = BartForConditionalGeneration(config)
    else:
        config = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, **tokens)
        model = T5ForConditionalGeneration(config)
    target = root / arch
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def bart_dir(tmp_path_factory, smollm2_dir) -> Path:
    return seq2seq_dir(tmp_path_factory.mktemp("seq2seq"), smollm2_dir, "bart")


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory, smollm2_dir) -> Path:
    return seq2seq_dir(tmp_path_factory.mktemp("seq2seq"), smollm2_dir, "t5")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT encoder without a classification head, with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bayespeft.backbones import resolve_model
    from bayespeft.config import ModelConfig

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ModelConfig(name="minilm-l6"))[0])
    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=128, **size)
    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
