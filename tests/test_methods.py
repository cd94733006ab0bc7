"""Each method's loss against a naive transcription of its paper's formula, and the parts a user relies
on: MoCo's queue and EMA, momentum schedules, W-MSE's whitening, LoGo's stop-gradients, two CPU steps."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysl.config import RunConfig
from raysl.views.batch import make_views
from raysl.methods import build_method
from raysl.methods.byol import byol_loss, regression_loss
from raysl.methods.logo import (
    Affinity, affinity_training_loss, global_global_loss, local_global_loss, local_local_loss,
)
from raysl.methods.moco import KeyQueue, moco_loss, shuffled_keys
from raysl.methods.momentum import cosine_momentum, ema_update
from raysl.methods.simsiam import negative_cosine, simsiam_loss
from raysl.methods.wmse import WhiteningError, whiten, wmse_loss
from raysl.training.loop import CHECKPOINT_FILE, Trainer

SMALL_MODEL = {"width": 8, "projector_hidden": 32, "projector_out": 16}
LOGO_VIEWS = {"crops": [
    {"count": 2, "size": 28, "scale": [0.4, 1.0], "role": "global"},
    {"count": 2, "size": 14, "scale": [0.05, 0.4], "role": "local"},
]}
METHOD_RUNS = {
    "simclr": {},
    "moco": {"method": {"name": "moco", "queue_size": 64, "shuffle_bn_groups": 2}},
    "moco-symmetric-cosine": {"method": {"name": "moco", "queue_size": 64, "symmetric": True, "momentum_schedule": "cosine"}},
    "simsiam": {"method": {"name": "simsiam", "predictor_hidden": 8}},
    "byol": {"method": {"name": "byol", "predictor_hidden": 16}},
    "wmse": {"method": {"name": "wmse", "w_size": 32}},
    "wmse-4-positives": {"method": {"name": "wmse", "w_size": 32}, "views": {"crops": [{"count": 4}]}},
    "logo-moco": {"method": {"name": "logo-moco", "queue_size": 128}, "views": LOGO_VIEWS},
    "logo-simsiam": {"method": {"name": "logo-simsiam", "predictor_hidden": 8}, "views": LOGO_VIEWS},
}


def small_run(extra: dict, **fields) -> RunConfig:
    return RunConfig.model_validate({"model": SMALL_MODEL, "batch_size": 32, "epochs": 2, **extra, **fields})


def random_unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


# ----------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", list(METHOD_RUNS))
def test_every_method_trains_two_steps_on_cpu_with_a_finite_loss(name):
    run = small_run(METHOD_RUNS[name])
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 28, 28, 1), dtype=torch.uint8, generator=generator)
    batches = [make_views(images[i * 32 : (i + 1) * 32], run.views, generator) for i in range(2)]
    before = [p.detach().clone() for p in trainer.method.backbone.parameters()]
    metrics = trainer.train_epoch(batches)
    assert math.isfinite(metrics["loss"]) and metrics["epoch"] == 1
    if name.startswith("logo-"):  # LoGo's terms are reported per epoch too (Tune, TensorBoard)
        assert {"l_gg", "l_lg", "l_ll", "l_omega"} <= set(metrics)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.method.backbone.parameters()))


# ----------------------------------------------------------------------------- MoCo


def moco_by_the_formula(q, k, queue, tau):
    """MoCo eq. (1): L_q = -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_i exp(q.k_i/tau)), mean over queries."""
    total = 0.0
    for i in range(q.shape[0]):
        positive = math.exp(torch.dot(q[i], k[i]).item() / tau)
        negatives = sum(math.exp(torch.dot(q[i], queue[:, j]).item() / tau) for j in range(queue.shape[1]))
        total += -math.log(positive / (positive + negatives))
    return total / q.shape[0]


@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_moco_loss_matches_the_formula(tau):
    q, k = random_unit(6, 8, 0).double(), random_unit(6, 8, 1).double()
    queue = random_unit(10, 8, 2).double().T
    assert moco_loss(q, k, queue, tau).item() == pytest.approx(moco_by_the_formula(q, k, queue, tau), rel=1e-9)


def test_moco_loss_exact_value_when_everything_is_equal():
    # Positive and K negatives all equal: -log(1 / (K + 1)).
    q = F.normalize(torch.ones(4, 3), dim=1)
    queue = q[:1].T.repeat(1, 7)
    assert moco_loss(q, q, queue, 0.3).item() == pytest.approx(math.log(8), rel=1e-6)


def test_queue_wraps_around_and_moves_its_pointer():
    queue = KeyQueue(dim=2, size=6)
    batches = [torch.full((2, 2), float(value)) for value in range(1, 5)]
    for batch in batches[:3]:
        queue.enqueue(batch)
    assert int(queue.pointer) == 0  # 3 x 2 keys filled 6 slots and wrapped
    assert queue.keys[0].tolist() == [1, 1, 2, 2, 3, 3]
    queue.enqueue(batches[3])  # overwrites the oldest two
    assert int(queue.pointer) == 2 and queue.keys[0].tolist() == [4, 4, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="multiple"):
        queue.enqueue(torch.zeros(4, 2))


def test_the_loss_uses_the_queue_before_this_steps_keys_are_enqueued():
    run = small_run(METHOD_RUNS["moco"])
    method = build_method(run, 1)
    before = method.queue.keys.clone()
    views = [torch.rand(32, 1, 28, 28), torch.rand(32, 1, 28, 28)]
    loss = method(views)
    loss.backward()  # the enqueue must not break the graph (the loss holds a copy of the queue)
    assert int(method.queue.pointer) == 32
    assert not torch.equal(method.queue.keys[:, :32], before[:, :32]) and torch.equal(method.queue.keys[:, 32:], before[:, 32:])
    torch.testing.assert_close(method.queue.keys.norm(dim=0), torch.ones(64))


def test_shuffle_bn_keys_come_back_in_their_images_order():
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))  # no batch norm: order is all that matters
    images = torch.randn(8, 1, 2, 2)
    keys, everyone = shuffled_keys(encoder, images, groups=4)
    expected = F.normalize(encoder(images), dim=1)
    torch.testing.assert_close(keys, expected)
    torch.testing.assert_close(everyone, expected)


def test_shuffle_bn_normalises_keys_in_groups():
    # With batch norm, a key encoded in a group of 2 depends on its group: differs from the full batch.
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    images = torch.randn(8, 1, 2, 2)
    keys, _ = shuffled_keys(encoder, images, groups=4)
    full = F.normalize(encoder(images), dim=1)
    assert not torch.allclose(keys, full, atol=1e-3)


def test_ema_update_equals_the_formula():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [0.9 * t.detach() + 0.1 * o.detach() for t, o in zip(target.parameters(), online.parameters())]
    ema_update(target, online, 0.9)
    for got, want in zip(target.parameters(), expected):
        torch.testing.assert_close(got, want)


def test_moco_key_encoder_moves_after_the_step_by_the_momentum():
    run = small_run(METHOD_RUNS["moco"])
    method = build_method(run, 1)
    with torch.no_grad():
        for param in method.backbone.parameters():
            param.add_(1.0)
    query = [p.detach().clone() for p in itertools.chain(method.backbone.parameters(), method.projector.parameters())]
    key = [p.detach().clone() for p in method.key_encoder.parameters()]
    method.after_step(1, 100)
    for got, k, q in zip(method.key_encoder.parameters(), key, query):
        torch.testing.assert_close(got, 0.99 * k + 0.01 * q)


def test_momentum_schedules_end_points():
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    byol = build_method(small_run(METHOD_RUNS["byol"]), 1)
    assert byol.momentum_at(0, 10) == pytest.approx(0.99) and byol.momentum_at(10, 10) == pytest.approx(1.0)
    moco = build_method(small_run(METHOD_RUNS["moco-symmetric-cosine"]), 1)
    assert moco.momentum_at(0, 10) == pytest.approx(0.99) and moco.momentum_at(10, 10) == pytest.approx(1.0)
    fixed = build_method(small_run(METHOD_RUNS["moco"]), 1)
    assert fixed.momentum_at(0, 10) == fixed.momentum_at(10, 10) == pytest.approx(0.99)


def test_the_queue_survives_a_checkpoint_round_trip(tmp_path):
    run = small_run(METHOD_RUNS["moco"])
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 28, 28, 1), dtype=torch.uint8, generator=generator)
    batches = [make_views(images[i * 32 : (i + 1) * 32], run.views, generator) for i in range(3)]
    trainer.train_epoch(batches[:2])
    trainer.save(tmp_path)
    expected = trainer.train_epoch(batches[2:])
    resumed = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)
    resumed.load(tmp_path)
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["method"]
    assert int(saved["queue.pointer"]) == 0 and int(resumed.method.queue.pointer) == 0  # 2 x 32 = K = 64
    torch.testing.assert_close(resumed.method.queue.keys, saved["queue.keys"])
    for name in ("key_encoder.0.features.0.weight", "key_encoder.1.0.weight"):
        torch.testing.assert_close(resumed.method.state_dict()[name], saved[name])
    got = resumed.train_epoch(batches[2:])
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)


# ----------------------------------------------------------------------------- SimSiam and BYOL


def test_simsiam_loss_matches_the_formula_and_stops_the_gradient():
    p1, p2 = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    z1, z2 = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    # D(p, z) = -(p / |p|) . (z / |z|); L = D(p1, z2) / 2 + D(p2, z1) / 2
    naive = sum(-(p1[i] / p1[i].norm()) @ (z2[i] / z2[i].norm()) / 2 - (p2[i] / p2[i].norm()) @ (z1[i] / z1[i].norm()) / 2 for i in range(5)) / 5
    loss = simsiam_loss(p1, p2, z1, z2)
    assert loss.item() == pytest.approx(naive.item(), rel=1e-5)
    loss.backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None
    assert negative_cosine(torch.ones(2, 3), torch.ones(2, 3) * 5).item() == pytest.approx(-1.0)


def test_byol_loss_matches_the_formula_and_stops_the_gradient():
    q1, q2 = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    t1, t2 = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    naive = lambda q, z: sum(((q[i] / q[i].norm() - z[i] / z[i].norm()) ** 2).sum() for i in range(5)) / 5  # noqa: E731
    loss = byol_loss(q1, q2, t1, t2)
    assert loss.item() == pytest.approx(((naive(q1, t2) + naive(q2, t1)) / 2).item(), rel=1e-5)
    loss.backward()
    assert t1.grad is None and t2.grad is None
    assert regression_loss(torch.ones(2, 3), -torch.ones(2, 3)).item() == pytest.approx(4.0)


def test_byol_target_is_not_trained_by_the_optimizer():
    run = small_run(METHOD_RUNS["byol"])
    method = build_method(run, 1)
    assert all(not p.requires_grad for p in method.target.parameters())
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
    stepped = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not stepped & {id(p) for p in trainer.method.target.parameters()}


# ----------------------------------------------------------------------------- W-MSE


def test_whitened_sub_batch_has_identity_covariance():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) @ torch.randn(8, 8) + 3.0
    white = whiten(x, eps=0.0)
    centred = white - white.mean(dim=0)
    torch.testing.assert_close(centred.T @ centred / 63, torch.eye(8), atol=1e-4, rtol=0)


def test_whitening_shrinks_the_covariance_toward_identity():
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1)) * 5
    centred = x - x.mean(dim=0)
    covariance = centred.T @ centred / 31
    shrunk = 0.7 * covariance + 0.3 * torch.eye(4)
    white = whiten(x, eps=0.3)
    # whitening with the shrunk covariance C_s gives covariance L^-1 C L^-T with L L^T = C_s
    factor = torch.linalg.cholesky(shrunk)
    expected = torch.linalg.solve_triangular(factor, torch.linalg.solve_triangular(factor, covariance, upper=False).T, upper=False)
    torch.testing.assert_close(white.T @ white / 31, expected, atol=1e-4, rtol=1e-4)


def test_whitening_runs_in_float32_under_autocast():
    x = torch.randn(32, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        white = whiten(x.bfloat16(), eps=0.0)
    assert white.dtype == torch.float32


def test_a_singular_covariance_gives_a_clear_error():
    x = torch.randn(8, 16)  # 8 samples cannot fill 16 dimensions
    with pytest.raises(WhiteningError, match="method.eps.*method.w_size"):
        whiten(x, eps=0.0)
    assert torch.isfinite(whiten(x, eps=0.1)).all()  # shrinkage makes it positive definite


def wmse_by_the_formula(views, w_size, eps, permutations):
    """Per iteration, per sub-batch, per view: whiten; then || w_i/|w_i| - w_j/|w_j| ||^2 averaged over
    images and all d(d-1)/2 view pairs and iterations."""
    total, terms = 0.0, 0
    for permutation in permutations:
        whitened = [torch.zeros_like(v) for v in views]
        for index in permutation.view(-1, w_size):
            for v, out in zip(views, whitened):
                x = v[index].double()
                c = x - x.mean(dim=0)
                cov = (1 - eps) * (c.T @ c) / (len(index) - 1) + eps * torch.eye(x.shape[1], dtype=torch.float64)
                out[index] = (torch.linalg.inv(torch.linalg.cholesky(cov)) @ c.T).T.float()
        for i, j in itertools.combinations(range(len(views)), 2):
            for row in range(views[0].shape[0]):
                a, b = whitened[i][row], whitened[j][row]
                total += ((a / a.norm() - b / b.norm()) ** 2).sum().item()
            terms += 1
    return total / (terms * views[0].shape[0])


@pytest.mark.parametrize("positives, w_iter, eps", [(2, 1, 0.0), (4, 2, 0.0), (3, 1, 0.2)])
def test_wmse_loss_matches_the_formula(positives, w_iter, eps):
    generator = torch.Generator().manual_seed(positives)
    views = [torch.randn(24, 4, generator=generator) for _ in range(positives)]
    permutations = [torch.randperm(24, generator=generator) for _ in range(w_iter)]
    got = wmse_loss(views, 12, eps, permutations).item()
    assert got == pytest.approx(wmse_by_the_formula(views, 12, eps, permutations), rel=1e-4)


def test_wmse_of_identical_views_is_zero():
    z = torch.randn(16, 4)
    assert wmse_loss([z, z.clone()], 8, 0.0, [torch.randperm(16)]).item() == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------------- LoGo


def test_no_gradient_flows_into_the_global_targets_of_l_lg():
    local_out = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    global_targets = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    loss = local_global_loss(local_out, global_targets, lambda a, b: ((a - b) ** 2).mean())
    loss.backward()
    assert all(t.grad is None for t in global_targets)
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in local_out)


def test_logo_pair_terms_are_means_over_their_pairs():
    pair = lambda a, b: (a * b).sum()  # noqa: E731
    a, b, c = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])
    assert global_global_loss([a, b], [a, b], pair).item() == pytest.approx((2 + 2) / 2)  # (a,b), (b,a)
    assert local_global_loss([c], [a, b], pair).item() == pytest.approx((3 + 6) / 2)


def test_l_ll_trains_the_encoder_and_omega_learns_only_from_its_own_objective():
    affinity = Affinity(dim=4, hidden=8)
    locals_ = [torch.randn(6, 4, requires_grad=True) for _ in range(2)]
    local_local_loss(affinity, locals_).backward()
    assert all(e.grad is not None and e.grad.abs().sum() > 0 for e in locals_)
    assert all(p.grad is None for p in affinity.parameters())
    for e in locals_:
        e.grad = None
    affinity_training_loss(affinity, locals_).backward()
    assert all(e.grad is None for e in locals_)
    assert all(p.grad is not None for p in affinity.parameters())


def test_omega_learns_to_tell_same_image_local_pairs_from_others():
    torch.manual_seed(0)
    affinity = Affinity(dim=8, hidden=32)
    optimizer = torch.optim.Adam(affinity.parameters(), lr=1e-2)
    base = torch.randn(64, 8)
    for _ in range(150):
        pair = [base + 0.1 * torch.randn(64, 8), base + 0.1 * torch.randn(64, 8)]
        optimizer.zero_grad()
        affinity_training_loss(affinity, pair).backward()
        optimizer.step()
    affinity.eval()
    x, y = base + 0.1 * torch.randn(64, 8), base + 0.1 * torch.randn(64, 8)
    assert affinity(x, y).mean() > affinity(x, y.roll(1, dims=0)).mean() + 0.3


@pytest.mark.parametrize("name", ["logo-moco", "logo-simsiam"])
def test_logo_loss_is_l_gg_plus_l_lg_plus_lambda_l_ll_plus_omegas_objective(name):
    run = small_run(METHOD_RUNS[name])
    method = build_method(run, 1)
    views = [v.float() / 255 for v in make_views(torch.randint(0, 256, (32, 28, 28, 1), dtype=torch.uint8), run.views, torch.Generator().manual_seed(0))]
    assert [v.shape[-1] for v in views] == [28, 28, 14, 14]
    loss = method(views)
    t = {name: term.item() for name, term in method.last_terms.items()}
    assert loss.item() == pytest.approx(t["l_gg"] + t["l_lg"] + run.method.ll_weight * t["l_ll"] + t["l_omega"], rel=1e-5)
    if name == "logo-moco":
        assert int(method.base.queue.pointer) == 64  # both global views' keys enqueued, no local ones


def test_logo_simsiam_global_term_is_simsiam_on_the_global_views():
    run = small_run(METHOD_RUNS["logo-simsiam"])
    method = build_method(run, 1).eval()  # eval: batch-norm statistics fixed, so passes are comparable
    g1, g2 = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    z, p = method.base.project(torch.cat([g1, g2]))
    expected = simsiam_loss(p[:8], p[8:], z[:8], z[8:])
    l_gg, _, _ = method._simsiam_terms([g1, g2], [torch.rand(8, 1, 14, 14), torch.rand(8, 1, 14, 14)])
    assert l_gg.item() == pytest.approx(expected.item(), rel=1e-5)


def test_logo_runs_the_backbone_once_per_crop_resolution():
    run = small_run(METHOD_RUNS["logo-simsiam"])
    method = build_method(run, 1)
    sizes = []
    method.backbone.register_forward_hook(lambda module, inputs, output: sizes.append(tuple(inputs[0].shape)))
    method([v.float() / 255 for v in make_views(torch.randint(0, 256, (16, 28, 28, 1), dtype=torch.uint8), run.views, torch.Generator().manual_seed(0))])
    assert sizes == [(32, 1, 28, 28), (32, 1, 14, 14)]
