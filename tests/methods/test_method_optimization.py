"""Optimisers and one update step of each method on the tiny Llama."""

from __future__ import annotations

import pytest
import torch
from method_helpers import injected, token_ids

from bayespeft.config import TrainConfig
from bayespeft.enums import KLSchedule
from bayespeft.methods import TrainingContext
from bayespeft.methods.blob import KL_STABILIZER, gaussian_kl
from bayespeft.methods.kl_schedule import kl_weight

CONTEXT = TrainingContext(num_examples=16, batch_size=4, batches_per_epoch=4, total_steps=10)
TRAIN = TrainConfig(lr=1e-2, warmup_ratio=0.0)
KL_LR = 0.05


def _ids(optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


def _named(model, pattern: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if pattern in n}


def _nll(model, ids) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_blob_split_optimizers_hold_the_right_parameters():
    method, model = injected("blob", kl_period="epoch")
    opt = method.build_optimization(model, TRAIN, CONTEXT)
    assert set(opt.optimizers) == {"main", "kl"}
    main, kl = opt.optimizers["main"], opt.optimizers["kl"]
    assert isinstance(main, torch.optim.AdamW) and type(kl) is torch.optim.SGD
    a, b, rho = _named(model, "lora_A."), _named(model, "lora_B."), _named(model, "lora_A_rho")
    assert len(a) == len(b) == len(rho) == 5
    ids_a, ids_b, ids_rho = ({id(p) for p in d.values()} for d in (a, b, rho))
    assert _ids(main) == ids_a | ids_b
    assert _ids(kl) == ids_a | ids_rho
    assert kl.defaults["lr"] == method.config.kl_lr == 0.01
    assert opt.info["kl_period"] == 4


def test_blob_split_step_moves_everything_and_rho_by_sgd_on_nll_plus_kl():
    method, model = injected("blob", kl_period="epoch", kl_lr=KL_LR)
    opt = method.build_optimization(model, TRAIN, CONTEXT)
    ids = token_ids()
    rho = _named(model, "lora_A_rho")

    # the gradients the rule should use, computed on an identical forward (same seed)
    with method.sampling(True, seed=0):
        _nll(model, ids).backward()
    g_nll = {n: p.grad.clone() for n, p in rho.items()}
    model.zero_grad(set_to_none=True)
    kl_before = method.kl(model)
    kl_before.backward()
    g_kl = {n: p.grad.clone() for n, p in rho.items()}
    model.zero_grad(set_to_none=True)

    before = _snapshot(model)
    pi = 2 / (2**5 - 1)  # cyclic, M = 4 batches per epoch, step 1
    with method.sampling(True, seed=0):
        nll = _nll(model, ids)
    logs = opt.step(nll, lambda loss: loss.backward())

    assert set(logs) == {"nll", "kl", "weighted_kl", "neg_elbo", "pi", "lr"}
    assert logs["pi"] == pytest.approx(pi)
    assert logs["nll"] == pytest.approx(float(nll))
    assert logs["weighted_kl"] == pytest.approx(pi * logs["kl"])
    assert logs["neg_elbo"] == pytest.approx(logs["nll"] + pi * logs["kl"])
    after = _snapshot(model)
    # The KL is taken after the AdamW step, as in the reference: the SGD step on it scales each A by
    # (1 - c) with c = kl_lr * pi * 2 / (2 beta^2 + e), so A after AdamW = A_final / (1 - c).
    beta = method.config.beta
    shrink = 1 - KL_LR * pi * 2 / (2 * beta**2 + KL_STABILIZER)
    mean_of = {name: name.replace("lora_A_rho.default", "lora_A.default.weight") for name in rho}
    kl_logged = sum(gaussian_kl(after[mean_of[n]] / shrink, before[n].square(), beta) for n in rho)
    assert logs["kl"] == pytest.approx(float(kl_logged), rel=1e-6)
    assert logs["kl"] != pytest.approx(float(kl_before), rel=1e-9)
    for name in before:
        assert not torch.equal(before[name], after[name]), f"{name} did not move"
    for name, p in rho.items():
        expected = before[name] - KL_LR * (g_nll[name] + pi * g_kl[name])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)
        assert p.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_blob_elbo_mode_uses_one_optimizer_with_rho():
    method, model = injected("blob", optimization="elbo", kl_period="epoch")
    opt = method.build_optimization(model, TRAIN, CONTEXT)
    assert list(opt.optimizers) == ["main"]
    main = opt.optimizers["main"]
    assert isinstance(main, torch.optim.AdamW)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert _ids(main) == trainable
    assert {id(p) for p in _named(model, "lora_A_rho").values()} <= _ids(main)
    before = _snapshot(model)
    with method.sampling(True, seed=0):
        logs = opt.step(_nll(model, token_ids()), lambda loss: loss.backward())
    assert set(logs) == {"nll", "kl", "weighted_kl", "neg_elbo", "pi", "lr"}
    after = _snapshot(model)
    assert all(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize(("name", "decay"), [("mle", 0.0), ("map", 1e-5)])
def test_deterministic_methods_use_adamw(name, decay):
    method, model = injected(name)
    opt = method.build_optimization(model, TRAIN, CONTEXT)
    (main,) = opt.optimizers.values()
    assert isinstance(main, torch.optim.AdamW)
    assert main.param_groups[0]["weight_decay"] == decay
    assert _ids(main) == {id(p) for p in model.parameters() if p.requires_grad}
    assert not method.stochastic and method.kl(model) is None
    before = _snapshot(model)
    logs = opt.step(_nll(model, token_ids()), lambda loss: loss.backward())
    assert set(logs) == {"nll", "lr"}
    assert all(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if n in before)


def test_blob_schedule_info_reports_a_kl_never_applied():
    method, model = injected("blob")  # dataset_rescaled: M = floor(100 * 16^(pi/8) / 4) > 10 steps
    opt = method.build_optimization(model, TRAIN, CONTEXT)
    assert opt.info["kl_period"] > CONTEXT.total_steps
    assert opt.info["kl_period_exceeds_run"] is True
    assert opt.info["kl_schedule_warning"]


def test_blob_kl_step_warning_names_the_overshoot_it_predicts():
    """Above the bound, one SGD KL step at the heaviest pi flips A's means, as the warning says."""
    assert build_blob_optimization(kl_lr=0.01)[2].info["kl_step_warning"] is None
    method, model, opt = build_blob_optimization(kl_lr=0.1)
    message = opt.info["kl_step_warning"]
    assert message and "method.kl_lr = 0.1" in message and "below 0.0" in message
    pi = max(kl_weight(step, 4, KLSchedule.CYCLIC) for step in range(1, 5))
    means = _named(model, "lora_A.")
    before = {n: p.detach().clone() for n, p in means.items()}
    kl_opt = opt.optimizers["kl"]
    (pi * method.kl(model)).backward()
    kl_opt.step()
    factor = 1 - 0.1 * pi / method.config.beta**2
    assert factor < 0 and f"{factor:.3g}" in message
    for name, p in means.items():
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-4, atol=1e-7)


def build_blob_optimization(**overrides):
    method, model = injected("blob", kl_period="epoch", **overrides)
    return method, model, method.build_optimization(model, TRAIN, CONTEXT)


@pytest.mark.parametrize("optimization", ["split", "elbo"])
def test_blob_mean_weight_decay_leaves_the_means_to_their_own_decay(optimization):
    """``mean_weight_decay`` splits AdamW's decay: B at train.weight_decay, A's means apart (rho: never decayed)."""
    train = TrainConfig(lr=1e-2, warmup_ratio=0.0, weight_decay=20.0)
    method, model = injected("blob", kl_period="epoch", optimization=optimization, mean_weight_decay=0.0)
    main = method.build_optimization(model, train, CONTEXT).optimizers["main"]
    decay_of = {id(p): g["weight_decay"] for g in main.param_groups for p in g["params"]}
    a, b = _named(model, "lora_A."), _named(model, "lora_B.")
    assert {decay_of[id(p)] for p in a.values()} == {0.0}
    assert {decay_of[id(p)] for p in b.values()} == {20.0}
    # without it A's means and B share train.weight_decay, as before
    method, model = injected("blob", kl_period="epoch", optimization=optimization)
    main = method.build_optimization(model, train, CONTEXT).optimizers["main"]
    assert [g["weight_decay"] for g in main.param_groups] == [20.0] + ([0.0] if optimization == "elbo" else [])


@pytest.mark.parametrize("name", ["blob", "bbb"])
def test_elbo_mode_never_decays_the_posterior_std(name):
    """In ELBO mode rho shares AdamW with the means, but a decay on it would pull the std to 0 against the KL."""
    train = TrainConfig(lr=1e-2, warmup_ratio=0.0, weight_decay=20.0)
    method, model = injected(name, kl_period="epoch", optimization="elbo")
    main = method.build_optimization(model, train, CONTEXT).optimizers["main"]
    decay_of = {id(p): g["weight_decay"] for g in main.param_groups for p in g["params"]}
    stds = [p for n, p in model.named_parameters() if any(s in n for s in method.std_parameters)]
    assert stds and {decay_of[id(p)] for p in stds} == {0.0}
    means = _named(model, "lora_A.") | _named(model, "lora_B.")
    assert {decay_of[id(p)] for p in means.values()} == {20.0}


def test_blob_mean_weight_decay_zero_keeps_a_mean_where_decay_would_shrink_it():
    """One ELBO step at a huge decay: decayed, a mean is first halved (1 - lr wd); at 0 it takes the Adam step alone."""
    train = TrainConfig(lr=1e-2, warmup_ratio=0.0, weight_decay=50.0)
    steps = {}
    for mean_decay in (None, 0.0):
        torch.manual_seed(0)
        method, model = injected("blob", kl_period="epoch", optimization="elbo", mean_weight_decay=mean_decay)
        opt = method.build_optimization(model, train, CONTEXT)
        name = next(iter(_named(model, "lora_A.default")))
        before = _snapshot(model)[name]
        with method.sampling(True, seed=0):
            opt.step(_nll(model, token_ids()), lambda loss: loss.backward())
        steps[mean_decay] = (before, _named(model, "lora_A.default")[name].detach().clone())
    (before_decayed, after_decayed), (before_free, after_free) = steps[None], steps[0.0]
    torch.testing.assert_close(before_decayed, before_free)
    # the decoupled decay multiplies by 1 - lr * wd = 0.5 before the (identical) Adam step
    torch.testing.assert_close(after_free - after_decayed, 0.5 * before_free, rtol=1e-4, atol=1e-6)
