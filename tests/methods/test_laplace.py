"""Laplace-LoRA: curvature against brute force, the prior precision, the GLM predictive, a full run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from method_helpers import OneLinear

from bayespeft.checkpoint import load_tensors
from bayespeft.config import LoraSettings, TrainConfig, load_config
from bayespeft.errors import ConfigError, RunDirError
from bayespeft.methods import TrainingContext, build_method
from bayespeft.methods.laplace import (
    POSTERIOR_FILE,
    LaplaceConfig,
    LaplaceLora,
    log_marginal_likelihood,
    lowrank_update,
    maximize_log_evidence,
)
from bayespeft.training import Trainer, build_session

D_IN, C, RANK = 5, 3, 2
SETTINGS = LoraSettings(r=RANK, alpha=4.0)


class VectorTask:
    """Class logits = the model's output, mean-pooled over positions for [B, T, d] inputs."""

    num_classes = C

    def class_logits(self, model, batch, repeats=1):
        out = model(batch["x"].repeat(repeats, *[1] * (batch["x"].dim() - 1)))
        return out.mean(1) if out.dim() == 3 else out


def source_adapter(folder: Path, seed: int = 1) -> Path:
    """An mle adapter on one Linear(5 -> 3) with random nonzero A and B."""
    torch.manual_seed(0)
    method = build_method("mle")
    model = method.inject(OneLinear(D_IN, C), SETTINGS, ["proj"], None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer = model.base_model.model.proj
        layer.lora_A["default"].weight.copy_(torch.randn(RANK, D_IN, generator=gen))
        layer.lora_B["default"].weight.copy_(torch.randn(C, RANK, generator=gen))
    return method.save_adapter(model, folder)


def laplace_model(source: Path, **overrides) -> tuple[LaplaceLora, torch.nn.Module]:
    torch.manual_seed(0)
    method = build_method("laplace", source_adapter=str(source), n_kfac_rank=16, **overrides)
    return method, method.inject(OneLinear(D_IN, C), SETTINGS, ["proj"], None)


def lora_params(model) -> list[torch.Tensor]:
    layer = model.base_model.model.proj
    return [layer.lora_A["default"].weight, layer.lora_B["default"].weight]


def brute_jacobian(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, C], J [N, C, P]) over the flattened (A, B), one autograd call per entry."""
    params = lora_params(model)
    logits = VectorTask().class_logits(model, {"x": x})
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(logits[n, c], params, retain_graph=True)])
        for n in range(x.shape[0])
        for c in range(C)
    ]
    return logits.detach(), torch.stack(rows).view(x.shape[0], C, -1).double()


def brute_ggn(model, x: torch.Tensor) -> torch.Tensor:
    logits, J = brute_jacobian(model, x)
    p = torch.softmax(logits.double(), -1)
    H = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.einsum("nci,ncd,ndj->ij", J, H, J)


def kfac_block(method, name: str) -> torch.Tensor:
    post = method.posterior
    G = (post[f"{name}.out_vectors"] * post[f"{name}.out_values"]) @ post[f"{name}.out_vectors"].T
    A = (post[f"{name}.in_vectors"] * post[f"{name}.in_values"]) @ post[f"{name}.in_vectors"].T
    return torch.kron(G.double(), A.double())


A_NAME = "base_model.model.proj.lora_A.default"
B_NAME = "base_model.model.proj.lora_B.default"
P_A = RANK * D_IN


def batches(x: torch.Tensor, size: int) -> list[dict[str, torch.Tensor]]:
    return [
        {"x": x[i : i + size], "labels": torch.zeros(len(x[i : i + size]), dtype=torch.long)}
        for i in range(0, len(x), size)
    ]


# ---- curvature ----------------------------------------------------------------------------------------
def test_kfac_is_the_exact_ggn_block_for_one_example(tmp_path):
    method, model = laplace_model(source_adapter(tmp_path / "src"))
    x = torch.randn(1, D_IN)
    method.fit_curvature(model, VectorTask(), batches(x, 1))
    exact = brute_ggn(model, x)
    torch.testing.assert_close(kfac_block(method, A_NAME), exact[:P_A, :P_A], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(kfac_block(method, B_NAME), exact[P_A:, P_A:], atol=1e-5, rtol=1e-4)


def test_kfac_factors_are_the_summed_outer_products_over_batches(tmp_path):
    """G = sum_n sum_c g g^T with g = L_n^T dlogits/dout, A = mean_n a a^T, accumulated over batches."""
    method, model = laplace_model(source_adapter(tmp_path / "src"))
    x = torch.randn(7, D_IN)
    method.fit_curvature(model, VectorTask(), batches(x, 3))
    layer = model.base_model.model.proj
    A_w, B_w, s = (
        layer.lora_A["default"].weight.double(),
        layer.lora_B["default"].weight.double(),
        layer.scaling["default"],
    )
    p = torch.softmax(VectorTask().class_logits(model, {"x": x}).detach().double(), -1)
    H = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    # for lora_B the output gradient of logit c is s e_c; its input is A x
    G_B = s**2 * H.sum(0)
    a_B = x.double() @ A_w.T
    expected_B = torch.kron(G_B, a_B.T @ a_B / len(x))
    torch.testing.assert_close(kfac_block(method, B_NAME), expected_B, atol=1e-5, rtol=1e-4)
    G_A = s**2 * torch.einsum("cr,ncd,ds->rs", B_w, H, B_w)  # output gradient s B^T e_c
    expected_A = torch.kron(G_A, x.double().T @ x.double() / len(x))
    torch.testing.assert_close(kfac_block(method, A_NAME), expected_A, atol=1e-5, rtol=1e-4)


def test_diag_is_the_exact_ggn_diagonal_with_shared_positions(tmp_path):
    method, model = laplace_model(source_adapter(tmp_path / "src"), hessian="diag")
    x = torch.randn(6, 4, D_IN)  # 4 positions sharing the weights, mean-pooled logits
    method.fit_curvature(model, VectorTask(), batches(x, 4))
    exact = brute_ggn(model, x).diagonal()
    got = torch.cat([method.posterior[f"{A_NAME}.diag"].reshape(-1), method.posterior[f"{B_NAME}.diag"].reshape(-1)])
    torch.testing.assert_close(got.double(), exact, atol=1e-5, rtol=1e-4)


class ChoiceRowsTask:
    """Cloze-like: several model rows per example (``num_choices``), class logits = the sum of its rows' outputs."""

    num_classes = C

    def class_logits(self, model, batch, repeats=1):
        owners = torch.repeat_interleave(torch.arange(len(batch["num_choices"])), batch["num_choices"])
        return torch.zeros(len(batch["num_choices"]), C).index_add(0, owners, model(batch["x"]))


def brute_rows_jacobian(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, C], J [N, C, P]) of ChoiceRowsTask over the flattened (A, B)."""
    params = lora_params(model)
    logits = ChoiceRowsTask().class_logits(model, batch)
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(logits[n, c], params, retain_graph=True)])
        for n in range(logits.shape[0])
        for c in range(C)
    ]
    return logits.detach(), torch.stack(rows).view(logits.shape[0], C, -1).double()


def test_rows_of_one_example_are_summed_into_its_jacobian(tmp_path):
    """Cloze scoring feeds one row per choice: the curvature and the GLM variance must be per example."""
    method, model = laplace_model(source_adapter(tmp_path / "src"), hessian="diag")
    batch = {"x": torch.randn(7, D_IN), "num_choices": torch.tensor([3, 1, 3]), "labels": torch.tensor([0, 2, 1])}
    method.fit_curvature(model, ChoiceRowsTask(), [batch])
    logits, J = brute_rows_jacobian(model, batch)
    p = torch.softmax(logits.double(), -1)
    H = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    exact = torch.einsum("nci,ncd,ndj->ij", J, H, J)
    got = torch.cat([method.posterior[f"{A_NAME}.diag"].reshape(-1), method.posterior[f"{B_NAME}.diag"].reshape(-1)])
    torch.testing.assert_close(got.double(), exact.diagonal(), atol=1e-5, rtol=1e-4)
    _, f_var = method.glm(model, ChoiceRowsTask(), batch, 1.0)
    cov = torch.diag(1.0 / (got.double() + 1.0))
    torch.testing.assert_close(f_var, J @ cov @ J.transpose(1, 2), atol=1e-6, rtol=1e-4)


def test_rows_without_owners_are_refused(tmp_path):
    method, model = laplace_model(source_adapter(tmp_path / "src"))
    batch = {"x": torch.randn(7, D_IN), "num_choices": torch.tensor([3, 1, 3]), "labels": torch.tensor([0, 2, 1])}

    class NoCounts(ChoiceRowsTask):
        def class_logits(self, model, batch, repeats=1):
            return super().class_logits(model, {**batch, "num_choices": torch.tensor([3, 1, 3])})

    with pytest.raises(ConfigError, match="7 model rows for 3 examples"):
        method.fit_curvature(model, NoCounts(), [{"x": batch["x"], "labels": batch["labels"]}])


def test_lowrank_update_keeps_the_top_eigenpairs():
    gen = torch.Generator().manual_seed(0)
    vectors = [torch.randn(12, 5, generator=gen, dtype=torch.float64) for _ in range(4)]
    root = None
    for v in vectors:
        root = lowrank_update(root, v, 12)
    full = sum(v @ v.T for v in vectors)
    torch.testing.assert_close(root @ root.T, full)
    truncated = lowrank_update(None, torch.cat(vectors, 1), 3)
    values, vecs = torch.linalg.eigh(full)
    top = (vecs[:, -3:] * values[-3:]) @ vecs[:, -3:].T
    torch.testing.assert_close(truncated @ truncated.T, top)
    torch.testing.assert_close(truncated.T @ truncated, torch.diag(values[-3:].flip(0)))


# ---- the prior precision -------------------------------------------------------------------------------
@pytest.mark.parametrize(("lam", "theta_sq"), [(4.0, 0.5), (100.0, 2.0), (0.3, 0.1)])
def test_marglik_recovers_the_analytic_optimum_in_one_dimension(lam, theta_sq):
    """One parameter, curvature lam: d/d delta = 0 at theta^2 delta (lam + delta) = lam."""
    expected = (-lam * theta_sq + math.sqrt(lam**2 * theta_sq**2 + 4 * theta_sq * lam)) / (2 * theta_sq)
    got = maximize_log_evidence(-3.0, theta_sq, 1, torch.tensor([lam]))
    assert got == pytest.approx(expected, rel=1e-6)


def test_marglik_optimum_is_mackays_fixed_point():
    eig = torch.tensor([50.0, 10.0, 3.0, 0.5, 0.01], dtype=torch.float64)
    theta_sq, num_params = 0.8, 20  # 15 directions without curvature
    delta = maximize_log_evidence(-10.0, theta_sq, num_params, eig)
    gamma = float((eig / (eig + delta)).sum())  # effective number of parameters
    assert delta == pytest.approx(gamma / theta_sq, rel=1e-6)
    around = log_marginal_likelihood(torch.tensor([delta * 0.9, delta, delta * 1.1]), -10.0, theta_sq, num_params, eig)
    assert around[1] > around[0] and around[1] > around[2]


# ---- the GLM predictive ----------------------------------------------------------------------------------
@pytest.mark.parametrize("hessian", ["kron", "diag"])
def test_glm_variance_matches_brute_force_and_shrinks_with_the_prior(tmp_path, hessian):
    method, model = laplace_model(source_adapter(tmp_path / "src"), hessian=hessian)
    x_fit, x_test = torch.randn(6, D_IN), torch.randn(4, D_IN)
    method.fit_curvature(model, VectorTask(), batches(x_fit, 3))
    if hessian == "kron":
        curvature = torch.block_diag(kfac_block(method, A_NAME), kfac_block(method, B_NAME))
    else:
        diag = [method.posterior[f"{A_NAME}.diag"].reshape(-1), method.posterior[f"{B_NAME}.diag"].reshape(-1)]
        curvature = torch.diag(torch.cat(diag).double())
    _, J = brute_jacobian(model, x_test)
    traces = []
    for delta in [0.1, 1.0, 10.0]:
        _, f_var = method.glm(model, VectorTask(), {"x": x_test}, delta)
        cov = torch.linalg.inv(curvature + delta * torch.eye(curvature.shape[0], dtype=torch.float64))
        torch.testing.assert_close(f_var, J @ cov @ J.transpose(1, 2), atol=1e-6, rtol=1e-4)
        assert torch.linalg.eigvalsh(f_var).min() >= -1e-9
        traces.append(f_var.diagonal(dim1=-2, dim2=-1).sum(-1))
    assert torch.all(traces[0] > traces[1]) and torch.all(traces[1] > traces[2])


def test_predictive_samples_are_probabilities(tmp_path):
    method, model = laplace_model(source_adapter(tmp_path / "src"), link_samples=64, prior_optimization="none")
    x = torch.randn(5, D_IN)
    method.fit_curvature(model, VectorTask(), batches(x, 5))
    method.fitted_prior_precision = 1.0
    batch = {"x": x, "labels": torch.zeros(5, dtype=torch.long)}
    with method.sampling(True, seed=0):
        probs = method.predictive_samples(model, VectorTask(), batch, 10, 10)
        again = method.predictive_samples(model, VectorTask(), batch, 10, 10)
    assert probs.shape == (5, 64, C)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 64))
    assert not torch.equal(probs, again)  # fresh draws
    for param in lora_params(model):  # a frozen adapter (as loaded for evaluation) works the same
        param.requires_grad_(False)
    with method.sampling(True, seed=0):
        torch.testing.assert_close(method.predictive_samples(model, VectorTask(), batch, 10, 10), probs)
    assert not any(param.requires_grad for param in lora_params(model))
    with method.sampling(False):
        map_probs = method.predictive_samples(model, VectorTask(), batch, 0, 1)
    assert map_probs.shape == (5, 1, C)
    torch.testing.assert_close(map_probs[:, 0], torch.softmax(VectorTask().class_logits(model, batch), -1).detach())


# ---- configuration and errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hessian": "full"}, "method.hessian"),
        ({"prior_optimization": "cv"}, "method.prior_optimization"),
        ({"prior_precision": 0.0}, "method.prior_precision"),
        ({"fit_examples": 0}, "method.fit_examples"),
        ({"val_examples": 0}, "method.val_examples"),
        ({"val_data": "test"}, "method.val_data"),
        ({"n_kfac_rank": 0}, "method.n_kfac_rank"),
        ({"link_samples": 0}, "method.link_samples"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=re.escape(field) + " must"):
        LaplaceConfig(source_adapter="somewhere", **overrides).validate()


def test_errors_no_source_training_steps_no_lora(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("method.source_adapter: Laplace needs a trained adapter")):
        build_method("laplace")
    with pytest.raises(RunDirError, match="nowhere"):
        laplace_model(tmp_path / "nowhere")
    method, model = laplace_model(source_adapter(tmp_path / "src"))
    context = TrainingContext(num_examples=8, batch_size=2, batches_per_epoch=4, total_steps=5)
    with pytest.raises(ConfigError, match=re.escape("train.max_steps must be 0 for laplace")):
        method.build_optimization(model, TrainConfig(), context)
    context.total_steps = 0
    assert method.build_optimization(model, TrainConfig(), context).optimizers == {}
    with pytest.raises(ConfigError, match="laplace needs LoRA parameters"):
        method.fit_curvature(OneLinear(D_IN, C), VectorTask(), batches(torch.randn(2, D_IN), 2))
    with pytest.raises(ConfigError, match=re.escape("model.lora.r")):
        method.inject(OneLinear(D_IN, C), LoraSettings(r=3, alpha=4.0), ["proj"], None)
    val_method, _ = laplace_model(tmp_path / "src", prior_optimization="val_nll", val_examples=4)
    with pytest.raises(ConfigError, match=re.escape("method.val_examples")):
        val_method.split_examples(list(range(4)))
    fit, val, pool = val_method.split_examples(list(range(10)))
    assert len(val) == 4 and pool == 6 and not set(fit) & set(val)
    unseen_method, _ = laplace_model(tmp_path / "src", prior_optimization="val_nll", val_examples=3, val_data="unseen")
    fit, val, pool = unseen_method.split_examples(list(range(10)), lambda n: list(range(100, 100 + n)))
    assert sorted(fit) == list(range(10)) and val == [100, 101, 102] and pool == 10
    for unseen in (None, lambda n: []):
        with pytest.raises(ConfigError, match=re.escape("method.val_data: unseen needs training-split examples")):
            unseen_method.split_examples(list(range(10)), unseen)


# ---- end to end ----------------------------------------------------------------------------------------------
def run_config(model_dir: Path, data_dir: Path, method: str, steps: int, *extra: str):
    return load_config(
        None,
        [
            f"model.name={model_dir}",
            f"method.name={method}",
            "data.dataset=arc_easy",
            f"data.data_dir={data_dir}",
            "data.max_train_examples=12",
            "data.max_eval_examples=6",
            "data.max_length=96",
            f"train.max_steps={steps}",
            "train.batch_size=2",
            "train.lr=0.05",
            "eval.n_samples=2",
            "eval.batch_size=6",
            *extra,
        ],
    )


@pytest.mark.parametrize(
    ("hessian", "prior", "scoring", "val_data"),
    [
        ("kron", "marglik", "letter", "train"),
        ("diag", "val_nll", "letter", "train"),
        ("diag", "val_nll", "letter", "unseen"),
        ("kron", "marglik", "cloze", "train"),
    ],
    ids=["kron-marglik", "diag-valnll", "diag-valnll-unseen", "kron-marglik-cloze"],
)
def test_laplace_run_after_an_mle_run(tmp_path_factory, tiny_llama_dir, shared_data, hessian, prior, scoring, val_data):
    mle_run = tmp_path_factory.getbasetemp() / f"laplace-mle-source-{scoring}"
    scored = f"data.mc_scoring={scoring}"
    if not (mle_run / "metrics.json").is_file():
        Trainer(run_config(tiny_llama_dir, shared_data, "mle", 4, scored), mle_run, progress=False).run_training()
    lap_run = tmp_path_factory.mktemp("laplace") / "run"
    extra = [f"method.source_adapter={mle_run / 'adapter'}", f"method.hessian={hessian}", scored]
    extra += [f"method.prior_optimization={prior}", "method.val_examples=4", "method.link_samples=200"]
    extra += [f"method.val_data={val_data}"]
    config = run_config(tiny_llama_dir, shared_data, "laplace", 0, *extra)
    payload = Trainer(config, lap_run, progress=False).run_training()
    assert payload["status"] == "finished"

    mle_metrics = json.loads((mle_run / "metrics.json").read_text())
    metrics = json.loads((lap_run / "metrics.json").read_text())
    record = metrics["train"]
    assert record["laplace_hessian"] == hessian and record["prior_precision"] > 0
    held_out = prior == "val_nll" and val_data == "train"  # validation taken out of the 12 training examples
    assert record["fit_examples"] == (8 if held_out else 12) and record["fit_time_s"] > 0
    assert record["val_examples"] == (4 if prior == "val_nll" else 0) and record["val_data"] == val_data
    assert record["posterior_floats"] > 0
    saved = load_tensors(lap_run / "adapter" / POSTERIOR_FILE)
    if hessian == "kron":  # low-rank factors: at most n_kfac_rank eigenpairs per factor
        vectors = [t for name, t in saved.items() if name.endswith("_vectors")]
        assert vectors and all(t.shape[1] <= 10 for t in vectors)
        if scoring == "letter":  # one position per example: far fewer floats than one per LoRA parameter
            assert record["posterior_floats"] < record["lora_params"] / 2
    if hessian == "diag":
        assert record["posterior_floats"] == record["lora_params"] + 1
        assert len(record["val_nll_grid"]) == 17
    assert metrics["metrics"]["nll"] != pytest.approx(mle_metrics["metrics"]["nll"], abs=1e-6)
    lines = (lap_run / "predictions.jsonl").read_text().splitlines()
    for line in lines:
        assert sum(json.loads(line)["probs"]) == pytest.approx(1.0, abs=1e-4)

    assert float(saved["prior_precision"]) == pytest.approx(record["prior_precision"])
    assert sum(t.numel() for t in saved.values()) == record["posterior_floats"]
    session = build_session(config)
    method = session.method
    assert isinstance(method, LaplaceLora) and not method.posterior
    method.load_adapter(session.model, lap_run / "adapter")
    assert method.fitted_prior_precision == pytest.approx(record["prior_precision"])
    assert set(method.posterior) == set(saved) - {"prior_precision"}
    other = build_method(
        "laplace", source_adapter=str(mle_run / "adapter"), hessian="kron" if hessian == "diag" else "diag"
    )
    with pytest.raises(RunDirError, match="posterior does not match"):
        other.load_adapter(session.model, lap_run / "adapter")


def test_fit_posthoc_record_on_the_one_linear(tmp_path):
    """fit_posthoc picks examples, fits, and reports memory and time (no accelerator needed)."""
    method, model = laplace_model(source_adapter(tmp_path / "src"), fit_examples=5)
    x = torch.randn(9, D_IN)

    class EncodingTask(VectorTask):
        def encode(self, examples):
            return list(examples)

        def collate(self, items):
            return {"x": x[list(items)], "labels": torch.tensor(items) % C}

    config = SimpleNamespace(eval=SimpleNamespace(batch_size=2))
    record = method.fit_posthoc(model, EncodingTask(), list(range(9)), config, None)
    assert record["fit_examples"] == 5 and record["curvature_scale"] == pytest.approx(9 / 5)
    assert record["lora_params"] == RANK * D_IN + C * RANK
    # K-FAC roots: A in (5 x <=5, r x r), B in (r x r, 3 x <=3) with their eigenvalues, plus delta
    assert record["posterior_floats"] == sum(t.numel() for t in method.posterior.values()) + 1
    assert record["prior_precision"] > 0 and math.isfinite(record["log_marginal_likelihood"])
