"""NT-Xent against the paper's formula, its exact value, and the multi-process gather path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import collect_from
from raysl.methods.simclr import nt_xent


def nt_xent_by_the_formula(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR eq. (1), loop by loop: l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau),
    averaged over all 2N ordered positive pairs; z = [z1; z2], the pair of k is k +- N."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        sim = lambda a, b: torch.dot(z[a], z[b]) / (z[a].norm() * z[b].norm())
        denominator = sum(math.exp(sim(i, k).item() / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim(i, j).item() / tau) / denominator)
    return torch.tensor(total / n2)


@pytest.mark.parametrize("n, dim, tau", [(4, 8, 0.5), (7, 16, 0.1), (16, 3, 1.0)])
def test_nt_xent_matches_the_formula(n, dim, tau):
    generator = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, dim, generator=generator), torch.randn(n, dim, generator=generator)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(nt_xent_by_the_formula(z1, z2, tau).item(), rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 32])
def test_identical_embeddings_give_log_2n_minus_1(n):
    z = torch.ones(n, 5)
    assert nt_xent(z, z.clone(), 0.3).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


def test_loss_is_lower_for_matching_pairs():
    z = F.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    shuffled = z[torch.randperm(32, generator=torch.Generator().manual_seed(1))]
    assert nt_xent(z, z + 0.01, 0.5) < nt_xent(z, shuffled, 0.5)


def _gather_worker(rank: int, world_size: int, init_file: str, z1: torch.Tensor, z2: torch.Tensor, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    n = z1.shape[0] // world_size
    local1 = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    local2 = z2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    loss = nt_xent(local1, local2, 0.2)
    loss.backward()
    # DDP averages gradients over ranks; the same here by hand: sum the loss and gradients, divide by world.
    queue.put((rank, loss.item(), local1.grad / world_size, local2.grad / world_size))
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_gather_equals_one_process(tmp_path):
    """Two gloo ranks, each with half the batch, give the single-process loss (mean over ranks) and
    the single-process gradients (each rank's slice), because negatives are gathered across ranks."""
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(8, 6, generator=generator), torch.randn(8, 6, generator=generator)
    full1, full2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    expected = nt_xent(full1, full2, 0.2)
    expected.backward()

    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [
        context.Process(target=_gather_worker, args=(rank, 2, str(tmp_path / "init"), z1, z2, queue)) for rank in range(2)
    ]
    for process in processes:
        process.start()
    results = sorted(collect_from(processes, queue, 2, timeout=120), key=lambda result: result[0])
    mean_loss = sum(loss for _, loss, _, _ in results) / 2
    assert mean_loss == pytest.approx(expected.item(), rel=1e-5)
    grad1 = torch.cat([g1 for _, _, g1, _ in results])
    grad2 = torch.cat([g2 for _, _, _, g2 in results])
    torch.testing.assert_close(grad1, full1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad2, full2.grad, rtol=1e-4, atol=1e-6)
