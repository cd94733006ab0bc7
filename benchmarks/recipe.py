"""Train one SimCLR recipe in-process (no Ray, one thread) on Fashion-MNIST and print kNN top-1 per epoch.

How the quickstart recipe was chosen: each candidate for a few epochs, two candidates at a time on
the 2-core machine (one core each, like two quickstart trials), compared epoch by epoch.

    .venv/bin/python benchmarks/recipe.py DATA_DIR '{"model": {"pool_size": 3}, "epochs": 4}'

DATA_DIR is a prepared dataset (`raysl prepare fashion-mnist --out DATA_DIR`); the JSON is a run
config (see raysl/config.py), every field optional. Checkpoints go to a temporary directory.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch

from raysl.config import RunConfig
from raysl.training.local import train_in_process


def main() -> None:
    data_uri, overrides = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as storage:
        run = RunConfig.model_validate({**overrides, "storage_path": storage, "name": "recipe"})
        train_in_process(run, data_uri, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
