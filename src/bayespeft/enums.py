"""String-valued options, so configs and CLI flags take plain words."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A str Enum whose members compare equal to, and print as, their values."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | StrEnum, field: str) -> StrEnum:
        """Return the member named ``value`` or raise a ConfigError naming ``field``."""
        from .errors import ConfigError

        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ConfigError(f"{field}: unknown value {value!r} (choose one of: {allowed})") from None


class KLSchedule(StrEnum):
    """How the KL term is weighted per optimisation step.

    - ``cyclic``: the BLoB reference schedule pi_k = 2^k / (2^(M+1) - 1), k = step mod M
      (k = M at the end of a cycle): the KL is applied once per period M, mostly at its end.
    - ``uniform``: pi = 1/M at every step. With M = batches per epoch this is the minibatch ELBO of a
      summed batch NLL; the tasks' NLL is the batch mean, so the KL weighs batch-size times KL / N.
    """

    CYCLIC = "cyclic"
    UNIFORM = "uniform"


class KLPeriod(StrEnum):
    """How the KL period M (in optimisation steps) is chosen.

    - ``epoch``: M = batches per epoch per process.
    - ``dataset_rescaled``: the reference's M = floor(100 * N^(pi/gamma) / processes / batch).
    """

    EPOCH = "epoch"
    DATASET_RESCALED = "dataset_rescaled"


class BlobOptimization(StrEnum):
    """How BLoB's two loss terms are optimised.

    - ``split``: the reference: AdamW on the NLL for A and B, then a plain SGD step at ``kl_lr``
      on pi * KL that moves A and the std parameters rho (rho also carries its NLL gradient).
    - ``elbo``: one AdamW on NLL + pi * KL over A, B and rho.
    """

    SPLIT = "split"
    ELBO = "elbo"


class StdParameterization(StrEnum):
    """How the posterior std G is computed from the free parameter rho.

    - ``square``: G = rho^2 (the reference default, chosen by eps >= 0).
    - ``softplus``: G = log(1 + exp(rho)) (the reference's choice for eps < 0).
    """

    SQUARE = "square"
    SOFTPLUS = "softplus"


class Precision(StrEnum):
    """Numeric precision of training and evaluation.

    - ``fp32``: everything in float32.
    - ``bf16``: backbone weights stored in bfloat16, adapters kept in float32.
    - ``bf16-autocast``: float32 weights, matrix products under bfloat16 autocast.
    """

    FP32 = "fp32"
    BF16 = "bf16"
    BF16_AUTOCAST = "bf16-autocast"


class ModelKind(StrEnum):
    """Which head the backbone carries.

    - ``causal_lm``: a decoder LM, scored from next-token logits (multiple choice by letter).
    - ``seq_cls``: an encoder with a sequence-classification head.
    - ``seq2seq``: an encoder-decoder LM (BART, T5), loaded with AutoModelForSeq2SeqLM, for generation.
    """

    CAUSAL_LM = "causal_lm"
    SEQ_CLS = "seq_cls"
    SEQ2SEQ = "seq2seq"


class DecodingStrategy(StrEnum):
    """How each sequence is decoded under its weight sample (see :mod:`bayespeft.generation`).

    - ``greedy``: the most likely next token at every step; deterministic given the weights, so
      all variation between samples is weight uncertainty.
    - ``beam``: beam search with ``num_beams`` beams, the best beam returned; deterministic too.
    - ``sample``: ancestral sampling from the next-token distribution after temperature, top-k and
      top-p, each sequence with its own seeded stream: decoding noise on top of weight noise.
    """

    GREEDY = "greedy"
    BEAM = "beam"
    SAMPLE = "sample"


class MCScoring(StrEnum):
    """How a causal LM scores the choices of a multiple-choice question.

    - ``letter``: choices listed as A) .. D) in the prompt; class logits are the next-token logits
      of the letters at the last position (BLoB's protocol; one forward per question).
    - ``cloze``: each choice text is appended to the question; its class logit is the mean log-probability
      of its tokens (length-normalised, as lm-eval's acc_norm). Small models that answer letter prompts
      at chance rank choice texts well above chance; costs one sequence per choice.
    """

    LETTER = "letter"
    CLOZE = "cloze"
