"""What a pretrained model's kNN figure on an encoded folder must beat: kNN top-1 by the monitor's protocol
(the same evaluation transform, k, temperature, bank and queries) on raw pixels and on a randomly initialised
backbone of a run config:

    .venv/bin/python benchmarks/folder_baselines.py sweeps/image-folder.yaml [--set KEY=VALUE ...]

Reads the config's base (a sweep file) or the run config, its data.path, model and evaluation sections.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    import os

    from raysl.ingest.resolve import resolve_data
    from raysl.config import detect_file_kind, load_run_config, load_sweep_config, read_yaml
    from raysl.ingest.dataset import read_manifest
    from raysl.ingest.dataset import channels_of
    from raysl.training.evaluation import load_eval_sets
    from raysl.training.loop import Trainer
    from raysl.training.monitor import knn_top1

    if detect_file_kind(read_yaml(args.config)) == "sweep":
        run = load_sweep_config(args.config, [f"base.{item}" for item in args.set]).base
    else:
        run = load_run_config(args.config, args.set)
    run = run.with_absolute_paths(os.getcwd())
    data_uri = resolve_data(run)
    manifest = read_manifest(data_uri)
    (eval_set,) = load_eval_sets(run, data_uri)[:1]
    bank_labels, query_labels, classes = eval_set.labels["label"]
    k, temperature = run.evaluation.knn_k, run.evaluation.knn_temperature

    def pixels(images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.reshape(len(images), -1).float(), dim=1)

    bank_images, query_images = (torch.from_numpy(images.array()) for images in (eval_set.bank_images, eval_set.query_images))
    pixel = knn_top1(pixels(query_images), query_labels, pixels(bank_images), bank_labels, classes, k, temperature)
    torch.set_num_threads(os.cpu_count() or 1)
    trainer = Trainer(run, channels_of(manifest), manifest["mean"], manifest["std"], steps_per_epoch=1)
    random = trainer.evaluate([eval_set])["knn_top1"]
    print(f"{data_uri}: bank {len(bank_labels)}, queries {len(query_labels)}, {classes} classes, "
          f"evaluation images {tuple(bank_images.shape[1:])}, k={k}, T={temperature}")
    print(f"  kNN top-1, raw pixels:                     {pixel:.4f}")
    print(f"  kNN top-1, random {run.model.backbone} (seed {run.seed}): {random:.4f}")


if __name__ == "__main__":
    main()
