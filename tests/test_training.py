"""The training loop without Ray: steps, schedule, checkpoints, non-finite loss, in-process training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from raysl.config import RunConfig
from raysl.views.batch import make_views
from raysl.training.local import train_in_process
from raysl.training.loop import CHECKPOINT_FILE, NonFiniteLossError, Trainer
from raysl.training.optim import warmup_cosine

SMALL = {"model": {"width": 8, "projector_hidden": 32, "projector_out": 16}, "batch_size": 16, "epochs": 2}


def view_batches(run: RunConfig, steps: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (steps * run.batch_size, 28, 28, 1), dtype=torch.uint8, generator=generator)
    return [make_views(images[i * run.batch_size : (i + 1) * run.batch_size], run.views, generator) for i in range(steps)]


@pytest.mark.parametrize("backbone, optimizer", [("small_cnn", "adamw"), ("small_cnn", "lars"), ("resnet18", "sgd")])
def test_two_steps_give_a_finite_loss_and_move_the_weights(backbone, optimizer):
    run = RunConfig.model_validate({**SMALL, "model": {**SMALL["model"], "backbone": backbone}, "optimizer": {"name": optimizer}})
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)
    before = [p.detach().clone() for p in trainer.method.parameters()]
    metrics = trainer.train_epoch(view_batches(run, 2))
    assert math.isfinite(metrics["loss"]) and metrics["epoch"] == 1 and metrics["images_per_s"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.method.parameters()))


def test_warmup_then_cosine_end_points():
    assert warmup_cosine(0, 10, 100, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(100, 10, 100, 0.0) == pytest.approx(0.0)
    assert warmup_cosine(100, 10, 100, 0.2) == pytest.approx(0.2)
    assert warmup_cosine(55, 10, 100, 0.0) == pytest.approx(0.5)


def test_checkpoint_round_trip_continues_identically(tmp_path):
    """Train 1 epoch, save, train a 2nd; a fresh trainer loaded from the save trains the same 2nd epoch."""
    run = RunConfig.model_validate(SMALL)
    batches = view_batches(run, 4)
    first = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)
    first.train_epoch(batches[:2])
    first.save(tmp_path)
    expected = first.train_epoch(batches[2:])

    resumed = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)
    resumed.load(tmp_path)
    assert resumed.epoch == 1 and resumed.step == 2
    got = resumed.train_epoch(batches[2:])
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5) and got["lr"] == pytest.approx(expected["lr"])
    for a, b in zip(first.method.state_dict().values(), resumed.method.state_dict().values()):
        torch.testing.assert_close(a, b)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["config"]["epochs"] == 2 and "git_commit" in state and "scaler" in state and "rng" in state


def test_non_finite_loss_stops_with_a_clear_message_and_no_checkpoint(tmp_path):
    run = RunConfig.model_validate(SMALL)
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)
    with torch.no_grad():
        next(trainer.method.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="optimizer.lr"):
        trainer.train_epoch(view_batches(run, 2))
    assert trainer.epoch == 0
    with pytest.raises(NonFiniteLossError, match="refusing to write a checkpoint"):
        trainer.save(tmp_path)
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_in_process_training_learns_and_resumes(tiny_dataset, tmp_path):
    # 512 of the 2000 images and a smaller evaluation: what the epochs, the figure and the resume need
    run = RunConfig.model_validate(
        {**SMALL, "batch_size": 64, "epochs": 2, "storage_path": str(tmp_path), "name": "local",
         "data": {"path": tiny_dataset, "train_limit": 512}, "evaluation": {"bank_limit": 1000, "query_limit": 200},
         "optimizer": {"lr": 0.01}, "schedule": {"warmup_epochs": 0}}
    )
    lines = []
    output = Path(train_in_process(run, tiny_dataset, log=lines.append))
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["knn_top1"] > 0.5  # 10 classes: chance is 0.1
    longer = run.model_copy(update={"epochs": 3})
    train_in_process(longer, tiny_dataset, log=lines.append)
    assert any("resumed" in line and "after epoch 2" in line for line in lines)
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


def test_the_loop_measures_its_wait_for_data(monkeypatch):
    # A clock of the test's own (the loop's time.perf_counter): the input pipeline takes 0.2 s a batch and each
    # forward pass 0.05 s on it, whatever this machine's speed; the loop must count exactly the pipeline's part as
    # its wait for data, and the whole as train_seconds.
    import types

    import raysl.training.loop as loop

    now = [100.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    run = RunConfig.model_validate(SMALL)
    batches = view_batches(run, 3)

    def slow_pipeline():
        for views in batches:
            now[0] += 0.2  # an input pipeline that cannot keep up
            yield views

    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=3)
    trainer.model.register_forward_hook(lambda *args: now.__setitem__(0, now[0] + 0.05))  # compute
    starved = trainer.train_epoch(slow_pipeline())
    assert starved["data_wait_seconds"] == pytest.approx(0.6) and starved["train_seconds"] == pytest.approx(0.75)
    assert starved["data_wait_fraction"] == pytest.approx(0.8)
    fed = trainer.train_epoch(iter(batches))
    assert fed["data_wait_seconds"] == 0 and fed["data_wait_fraction"] == 0 and fed["train_seconds"] == pytest.approx(0.15)
    assert fed["images_per_s"] == pytest.approx(3 * run.batch_size / 0.15)


@pytest.mark.slow
def test_a_compiled_backbone_trains_the_same_and_saves_the_same_keys(tmp_path):
    # compile: true must not change the maths (same seed, same batches: the same loss to float tolerance)
    # nor the checkpoint (an uncompiled run must load it).
    losses, states = [], []
    for compiled in (False, True):
        run = RunConfig.model_validate({**SMALL, "compile": compiled})
        trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)
        losses.append(trainer.train_epoch(view_batches(run, 2))["loss"])
        states.append(trainer.method.state_dict())
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    assert list(states[0]) == list(states[1])
    Trainer(RunConfig.model_validate(SMALL), 1, [0.5], [0.25], steps_per_epoch=2).method.load_state_dict(states[1])
