"""Flipout's noise term n = ((x * R) W^T) * S as one autograd function, with packed random signs.

R (input side, per token and input feature) and S (output side, per token and output unit) are
independent Rademacher signs. They are drawn as packed bits, one random 32-bit word per 32 signs,
and applied by flipping the float sign bit (an XOR), which is exactly multiplication by -1 or +1.
:class:`FlipoutNoise` saves x, W and the packed bits (1/32 of x's size in fp32), not x * R: the
backward pass recomputes the flipped tensors from the bits, so a Bayesian layer keeps no second
full-width activation for backward.
"""

from __future__ import annotations

import math
from typing import Any

import torch

BITS_PER_WORD = 32
SIGN_BIT = -(2**31)  # int32 with only the top bit set
SIGNED_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integer view of a float dtype


def random_sign_bits(numel: int, device: torch.device | str) -> torch.Tensor:
    """Packed independent fair bits for ``numel`` signs: int32 words, bit k of word i is sign 32 i + k.

    Drawn from the device's default generator, so a seeded sampling block reproduces them.
    """
    words = math.ceil(numel / BITS_PER_WORD)
    return torch.randint(SIGN_BIT, -SIGN_BIT, (words,), dtype=torch.int32, device=device)


def sign_mask(bits: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The bits unpacked into a mask of ``shape`` holding only the sign bit of ``dtype``'s integer view.

    The element-to-bit mapping does not depend on the dtype, so a tensor and its gradient (in another
    precision under autocast) see the same signs.
    """
    shifts = torch.arange(BITS_PER_WORD - 1, -1, -1, dtype=torch.int32, device=bits.device)
    mask = (bits.unsqueeze(-1) << shifts).bitwise_and_(SIGN_BIT).reshape(-1)[: shape.numel()].view(shape)
    if dtype.itemsize == 2:
        return (mask >> 16).to(torch.int16)
    if dtype.itemsize == 8:
        return mask.to(torch.int64) << 32
    return mask


def flip_signs(x: torch.Tensor, mask: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x * R with R = -1 where ``mask`` (from :func:`sign_mask`) holds the sign bit, +1 elsewhere.

    ``inplace`` overwrites x (a fresh, contiguous result nobody else holds) instead of allocating.
    """
    integer = SIGNED_INTS[x.element_size()]
    if inplace:
        x.view(integer).bitwise_xor_(mask)
        return x
    return (x.contiguous().view(integer) ^ mask).view(x.dtype)


class FlipoutNoise(torch.autograd.Function):
    """n = ((x * R) W_g^T) * S for the rows of sample group g, with R and S given as packed sign bits.

    x: [groups * n, ..., d_in] (sample-major), weight: [groups, d_out, d_in], output [..., d_out].
    Backward recomputes x * R and applies S to the incoming gradient from the bits instead of
    keeping either signed tensor from the forward pass.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, in_bits: torch.Tensor, out_bits: torch.Tensor
    ) -> torch.Tensor:
        groups, d_out, d_in = weight.shape
        flipped = flip_signs(x, sign_mask(in_bits, x.shape, x.dtype)).reshape(groups, -1, d_in)
        out = torch.bmm(flipped, weight.transpose(1, 2)).reshape(*x.shape[:-1], d_out)
        ctx.save_for_backward(x, weight, in_bits, out_bits)
        return flip_signs(out, sign_mask(out_bits, out.shape, out.dtype), inplace=True)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, in_bits, out_bits = ctx.saved_tensors
        groups, d_out, d_in = weight.shape
        grad = flip_signs(grad, sign_mask(out_bits, grad.shape, grad.dtype))  # d n / d (x R W^T) = S
        grad = grad.reshape(groups, -1, d_out)
        in_mask = sign_mask(in_bits, x.shape, x.dtype)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:  # under autocast grad may be bf16: multiply in its dtype, as autocast does
            grad_x = torch.bmm(grad, weight.to(grad.dtype)).reshape(x.shape).to(x.dtype)
            grad_x = flip_signs(grad_x, in_mask, inplace=True)  # a fresh product (or its cast)
        if ctx.needs_input_grad[1]:
            flipped = flip_signs(x, in_mask).reshape(groups, -1, d_in).to(grad.dtype)
            grad_weight = torch.bmm(grad.transpose(1, 2), flipped).to(weight.dtype)
        return grad_x, grad_weight, None, None


def flipout_noise(x: torch.Tensor, weight: torch.Tensor, what: str = "posterior samples") -> torch.Tensor:
    """Flipout noise ((x * R) W_g^T) * S with fresh per-token signs R and S; W: [groups, d_out, d_in].

    The batch (x's first dimension) must split into ``groups`` equal sample-major blocks (``what``
    names them in the error).
    """
    groups, d_out, _ = weight.shape
    if x.shape[0] % groups:
        raise ValueError(f"batch of {x.shape[0]} rows cannot hold {groups} stacked {what}")
    in_bits = random_sign_bits(x.numel(), x.device)
    out_bits = random_sign_bits(x.numel() // x.shape[-1] * d_out, x.device)
    return FlipoutNoise.apply(x, weight, in_bits, out_bits)
