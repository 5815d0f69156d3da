"""The Flipout noise function: packed signs, gradients (gradcheck and the plain formula), saved memory."""

from __future__ import annotations

import pytest
import torch

from bayespeft.methods.flipout import FlipoutNoise, flip_signs, flipout_noise, random_sign_bits, sign_mask

GROUPS, ROWS, SEQ, D_IN, D_OUT = 2, 3, 5, 7, 4


def _signs(bits: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """R = +-1 from the packed bits, unpacked one bit at a time in Python (bit k of word i: element 32 i + k)."""
    words = [int(w) & 0xFFFFFFFF for w in bits.tolist()]
    numel = torch.Size(shape).numel()
    values = [-1.0 if (words[i // 32] >> (i % 32)) & 1 else 1.0 for i in range(numel)]
    return torch.tensor(values, dtype=dtype).reshape(shape)


def _inputs(dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(GROUPS * ROWS, SEQ, D_IN, generator=gen, dtype=dtype, requires_grad=True)
    weight = torch.randn(GROUPS, D_OUT, D_IN, generator=gen, dtype=dtype, requires_grad=True)
    torch.manual_seed(1)
    in_bits = random_sign_bits(x.numel(), x.device)
    out_bits = random_sign_bits(GROUPS * ROWS * SEQ * D_OUT, x.device)
    return x, weight, in_bits, out_bits


def _plain_flipout(x, weight, in_signs, out_signs):
    """The formula as written before the custom function: ((x * R) W_g^T) * S with autograd's own backward."""
    flipped = (x * in_signs).reshape(GROUPS, -1, D_IN)
    return torch.bmm(flipped, weight.transpose(1, 2)).reshape(*x.shape[:-1], D_OUT) * out_signs


def test_gradcheck_in_float64():
    x, weight, in_bits, out_bits = _inputs()
    assert torch.autograd.gradcheck(FlipoutNoise.apply, (x, weight, in_bits, out_bits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradients_equal_the_plain_formula_on_the_same_signs(dtype):
    x, weight, in_bits, out_bits = _inputs(dtype)
    in_signs = _signs(in_bits, tuple(x.shape), dtype)
    out_signs = _signs(out_bits, (GROUPS * ROWS, SEQ, D_OUT), dtype)
    upstream = torch.randn(GROUPS * ROWS, SEQ, D_OUT, generator=torch.Generator().manual_seed(2), dtype=dtype)

    new = FlipoutNoise.apply(x, weight, in_bits, out_bits)
    new_grads = torch.autograd.grad(new, (x, weight), upstream)
    old = _plain_flipout(x, weight, in_signs, out_signs)
    old_grads = torch.autograd.grad(old, (x, weight), upstream)
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    for got, want in zip(new_grads, old_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_sign_flip_is_multiplication_by_the_unpacked_signs_in_every_dtype():
    torch.manual_seed(3)
    x = torch.randn(10, 37)
    bits = random_sign_bits(x.numel(), x.device)
    signs = _signs(bits, tuple(x.shape), torch.float32)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        expected = x.to(dtype) * signs.to(dtype)
        cast = x.to(dtype)
        assert torch.equal(flip_signs(cast, sign_mask(bits, x.shape, dtype)), expected), dtype


def test_packed_signs_are_fair_and_independent():
    torch.manual_seed(4)
    n = 200_000
    signs = flip_signs(torch.ones(n), sign_mask(random_sign_bits(n, "cpu"), torch.Size([n]), torch.float32))
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(signs.mean())) < 4 / n**0.5
    for lag in (1, 31, 32, 33):  # neighbours inside a word and across word boundaries
        assert abs(float((signs[:-lag] * signs[lag:]).mean())) < 4 / n**0.5, lag


def test_seeded_signs_repeat_and_fresh_draws_differ():
    x = torch.randn(4, 6, D_IN)
    weight = torch.randn(1, D_OUT, D_IN)
    torch.manual_seed(5)
    first = flipout_noise(x, weight)
    second = flipout_noise(x, weight)
    torch.manual_seed(5)
    assert torch.equal(flipout_noise(x, weight), first)
    assert not torch.equal(first, second)


def test_no_second_full_width_activation_is_saved():
    """Backward keeps x itself (which lora_A saves anyway), the small weight and the packed bits: nothing else wide."""
    x = torch.randn(8, 16, 64, requires_grad=True)
    weight = torch.randn(2, 4, 64, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = flipout_noise(x, weight)
    wide = [t for t in saved if t.numel() >= x.numel() // 4]
    assert len(wide) == 1 and wide[0].data_ptr() == x.data_ptr()
    assert sum(t.numel() * t.element_size() for t in saved if t is not wide[0]) < x.numel() * x.element_size() / 8
    out.sum().backward()
    assert x.grad is not None and weight.grad is not None


def test_bf16_autocast_gradients_follow_the_fp32_ones():
    x, weight, in_bits, out_bits = _inputs(torch.float32)
    fp32 = FlipoutNoise.apply(x, weight, in_bits, out_bits)
    want = torch.autograd.grad(fp32.sum(), (x, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = FlipoutNoise.apply(x, weight, in_bits, out_bits)
    assert bf16.dtype == torch.bfloat16
    got = torch.autograd.grad(bf16.float().sum(), (x, weight))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0.05, atol=0.05)


def test_batch_must_split_into_the_groups():
    with pytest.raises(ValueError, match="cannot hold 2 stacked weight samples"):
        flipout_noise(torch.randn(3, D_IN), torch.randn(2, D_OUT, D_IN), "weight samples")
