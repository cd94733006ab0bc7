"""Two gloo processes (no Ray) against one process on the same global batch, where the maths says they
agree: W-MSE (embeddings gathered, one permutation), MoCo's Shuffle-BN keys and queue of gathered keys,
SimSiam and BYOL (per-image losses: the mean over ranks is the global mean)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import collect_from
from raysl.methods.byol import byol_loss
from raysl.methods.distributed import gather_with_grad
from raysl.methods.moco import KeyQueue, shuffled_keys
from raysl.methods.simsiam import simsiam_loss
from raysl.methods.wmse import wmse_loss

WORLD = 2
N = 16  # global batch


def inputs():
    generator = torch.Generator().manual_seed(7)
    return {
        "z": [torch.randn(N, 4, generator=generator) for _ in range(3)],  # W-MSE, 3 positives
        "perms": [torch.randperm(N, generator=generator) for _ in range(2)],
        "images": torch.randn(N, 1, 2, 2, generator=generator),
        "pairs": [torch.randn(N, 5, generator=generator) for _ in range(4)],
    }


def encoder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def single_process(data):
    z = [t.clone().requires_grad_(True) for t in data["z"]]
    loss = wmse_loss(z, 8, 0.0, data["perms"])
    loss.backward()
    queue = KeyQueue(3, 2 * N)
    keys, everyone = shuffled_keys(encoder(), data["images"], groups=1)
    queue.enqueue(everyone)
    p = data["pairs"]
    return {
        "wmse": loss.item(), "wmse_grads": [t.grad for t in z], "keys": keys, "queue": queue.keys.clone(),
        "simsiam": simsiam_loss(*p).item(), "byol": byol_loss(*p).item(),
    }


def _worker(rank, init_file, data, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    n = N // WORLD
    mine = slice(rank * n, (rank + 1) * n)
    # W-MSE as the method does it: gather each view's rows with gradient, whiten the global batch.
    z = [t[mine].clone().requires_grad_(True) for t in data["z"]]
    loss = wmse_loss([gather_with_grad(t) for t in z], 8, 0.0, data["perms"])
    loss.backward()
    queue = KeyQueue(3, 2 * N)
    keys, everyone = shuffled_keys(encoder(), data["images"][mine], groups=1)
    queue.enqueue(everyone)
    p = [t[mine] for t in data["pairs"]]
    results.put((rank, {
        "wmse": loss.item(),
        "wmse_grads": [t.grad / WORLD for t in z],  # DDP averages gradients over ranks
        "keys": keys, "queue": queue.keys.clone(), "simsiam": simsiam_loss(*p).item(), "byol": byol_loss(*p).item(),
    }))
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_agree_with_one_process(tmp_path):
    data = inputs()
    expected = single_process(data)
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(rank, str(tmp_path / "init"), data, results)) for rank in range(WORLD)]
    for process in processes:
        process.start()
    got = dict(collect_from(processes, results, WORLD, timeout=120))
    # W-MSE: every rank computes the global loss; gradients reach each rank's own rows.
    for rank in range(WORLD):
        assert got[rank]["wmse"] == pytest.approx(expected["wmse"], rel=1e-5)
    for view in range(3):
        gathered = torch.cat([got[rank]["wmse_grads"][view] for rank in range(WORLD)])
        torch.testing.assert_close(gathered, expected["wmse_grads"][view], rtol=1e-4, atol=1e-6)
    # MoCo: Shuffle-BN across ranks hands each rank its own images' keys; both queues hold every rank's keys.
    torch.testing.assert_close(torch.cat([got[rank]["keys"] for rank in range(WORLD)]), expected["keys"])
    for rank in range(WORLD):
        torch.testing.assert_close(got[rank]["queue"][:, :N], expected["queue"][:, :N])  # the rest: random init
    # SimSiam / BYOL: per-image losses, so the mean over ranks is the global batch's loss.
    for name in ("simsiam", "byol"):
        assert sum(got[rank][name] for rank in range(WORLD)) / WORLD == pytest.approx(expected[name], rel=1e-5)
