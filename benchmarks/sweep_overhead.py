"""Sweep overhead: a Ray Tune sweep of N trials against the same trials' loops run without Ray (two
plain processes at a time, as the sweep runs two trials at a time), wall time side by side, and where the
sweep's extra time goes per trial (Tune's time_total_s minus the loop's own training + kNN + checkpoint time).
The sweep runs twice: each trial through a TorchTrainer (resources.trial_loop: train, as before issue 17) and
with its loop in the Tune trial itself (trial_loop: auto, the default for one worker).
    .venv/bin/python benchmarks/sweep_overhead.py [--trials 2] [--images N] [--epochs 3] [--loops train,auto]
Trials: the quickstart's run config, a grid over temperature; by default the quickstart's trial length (3
epochs of all 60k Fashion-MNIST images; --images N: the first N). The kNN monitor is cut to a 10k bank and
2k queries on both sides (it is the same work with or without Ray).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import yaml
from processes import ProcessSampler

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURES = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 0.15, 0.25]


def sweep_file(args, storage: str, loop: str) -> Path:
    """The quickstart sweep with short trials and a temperature grid, written into `storage`."""
    data = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    data["base"]["resources"]["trial_loop"] = loop
    data["base"].update({"epochs": args.epochs, "schedule": {"warmup_epochs": 0},
                         "evaluation": {"bank_limit": 10000, "query_limit": 2000}})
    data["base"]["data"]["train_limit"] = args.images
    data.update({"search": {"method.temperature": {"grid": TEMPERATURES[: args.trials]}}, "scheduler": {"name": "fifo"},
                 "time_budget_minutes": None, "storage_path": storage, "name": f"overhead-{loop}"})
    path = Path(storage, f"sweep-{loop}.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def plain_trial(job: tuple[dict, str, str]) -> None:
    import torch

    from raysl.config import RunConfig
    from raysl.training.local import train_in_process

    torch.set_num_threads(1)
    run, data_uri, storage = job
    train_in_process(RunConfig.model_validate(run), data_uri, log=lambda line: None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--images", type=int, default=None, help="train on the first N images (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--loops", default="train,auto", help="resources.trial_loop values to run the sweep with")
    args = parser.parse_args()

    from raysl.cli import main as raysl_main
    from raysl.ingest.resolve import resolve_data
    from raysl.config import apply_assignment, load_sweep_config

    with tempfile.TemporaryDirectory() as storage:
        sweeps = {}
        for loop in args.loops.split(","):
            path = sweep_file(args, storage, loop)
            sweep = load_sweep_config(path)
            data_uri = resolve_data(sweep.base)
            with ProcessSampler(os.getpid()) as sampler:
                started = time.perf_counter()
                assert raysl_main(["sweep", str(path)]) == 0
                wall = time.perf_counter() - started
            per_trial = []
            for result in Path(storage, f"overhead-{loop}").glob("trial_*/result.json"):
                rows = [json.loads(line) for line in result.read_text().splitlines()]
                spent = sum(row["train_seconds"] + row["eval_seconds"] + row.get("checkpoint_seconds", 0) for row in rows)
                per_trial.append((rows[-1]["time_total_s"], spent))
            sweeps[loop] = (wall, sampler.cpu_seconds(), per_trial)

        jobs = []
        for index, temperature in enumerate(TEMPERATURES[: args.trials]):
            run = apply_assignment(sweep.base, {"method.temperature": temperature})
            run = run.model_copy(update={"storage_path": f"{storage}/plain", "name": f"t{index}"})
            jobs.append((run.model_dump(mode="json"), data_uri, storage))
        with ProcessSampler(os.getpid()) as sampler:
            started = time.perf_counter()
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                pool.map(plain_trial, jobs)
            plain_wall = time.perf_counter() - started
        plain_cpu = sampler.cpu_seconds()

    print(f"{args.trials} trials of {args.epochs} epoch(s) on {args.images or 'all'} images, 2 at a time")
    print(f"{'':44s} {'wall':>8s} {'vs plain':>9s} {'start-up etc. per trial':>24s}")
    names = {"train": "Tune sweep, a TorchTrainer per trial", "auto": "Tune sweep, the loop in the trial"}
    for loop, (wall, _, per_trial) in sweeps.items():
        total, spent = sum(t for t, _ in per_trial), sum(lo for _, lo in per_trial)
        print(f"{names.get(loop, loop):44s} {wall:7.1f}s {wall / plain_wall - 1:+8.0%} "
              f"{(total - spent) / len(per_trial):22.1f}s  (Tune time {total / len(per_trial):.1f}s, loop {spent / len(per_trial):.1f}s)")
    print(f"{'plain processes, no Ray':44s} {plain_wall:7.1f}s")
    for loop, (_, sweep_cpu, _) in sweeps.items():
        print(f"CPU seconds by kind of process, {names.get(loop, loop)} ({sum(sweep_cpu.values()):.0f} s in all):")
        for kind, used in sorted(sweep_cpu.items(), key=lambda item: -item[1]):
            print(f"  {kind:22s} {used:7.1f}s")
    print(f"CPU seconds, plain processes ({sum(plain_cpu.values()):.0f} s in all):")
    for kind, used in sorted(plain_cpu.items(), key=lambda item: -item[1]):
        print(f"  {kind:22s} {used:7.1f}s")


if __name__ == "__main__":
    main()
