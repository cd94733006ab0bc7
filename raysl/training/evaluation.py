"""Evaluation sets and the full evaluation: kNN top-1 / top-5 and a linear probe per dataset, label set and
labeled budget, on frozen backbone features computed once per dataset. Pure: no Ray.

An evaluation set is one prepared dataset's clean train split (the kNN bank, the probe's training data) and
test split (the queries), brought to the model's input shape, with the label sets it is scored against:
the main dataset's `evaluation.label_sets`, and `label` for each pool dataset. Results are named
`<dataset>:<label set>`; the monitor's `knn_top1` is the main dataset's first label set.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from raysl.config import EvaluationConfig, RunConfig
from raysl.data.conditions import budget_indices, budget_name, to_shape
from raysl.data.labelsets import LabelSet, resolve_label_set
from raysl.data.prepare import load_labels, load_split, read_manifest
from raysl.data.rows import is_encoded, load_eval_split
from raysl.errors import UserError
from raysl.training.monitor import extract_features, knn_scores, topk_accuracy
from raysl.training.probe import probe_accuracy, train_linear_probe


@dataclass
class EvalSet:
    """One dataset's clean uint8 images (N, H, W, C) and, per label set, (bank labels, query labels, classes)."""

    dataset: str
    bank_images: torch.Tensor
    query_images: torch.Tensor
    labels: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=dict)

    def key(self, label_set: str) -> str:
        return f"{self.dataset}:{label_set}"


def label_sets_of(run: RunConfig, manifest: dict) -> list[LabelSet]:
    """The main dataset's label sets (checked against its classes; a UserError names the field or file)."""
    return [resolve_label_set(spec, manifest) for spec in run.evaluation.label_sets]


def load_eval_sets(run: RunConfig, data_uri: str, pool_uris: list[str] | tuple[str, ...] = ()) -> list[EvalSet]:
    """The main dataset's evaluation set (its label sets), then one per pool dataset (its `label`), all in the
    main dataset's image shape; evaluation.bank_limit / query_limit keep the first N rows."""
    from raysl.data.pretraining import main_shape

    manifest = read_manifest(data_uri)
    shape = main_shape(run, manifest)
    limits = run.evaluation.bank_limit, run.evaluation.query_limit
    sets = []
    sources = [(run.data.label, data_uri, label_sets_of(run, manifest))]
    for entry, uri in zip(run.data.pool, pool_uris):
        sources.append((entry.label, uri, [resolve_label_set("label", read_manifest(uri), field=f"data.pool {entry.label}")]))
    for name, uri, label_sets in sources:
        columns = sorted({label_set.column for label_set in label_sets})
        dataset_manifest = read_manifest(uri)
        split_data = {}
        for split, limit in zip(("train", "test"), limits):
            if is_encoded(dataset_manifest):  # the evaluation transform: short side resized, centre crop
                split_data[split] = load_eval_split(uri, dataset_manifest, split, shape, limit=limit, label_columns=columns,
                                                    crop_fraction=run.evaluation.crop_fraction)
                continue
            images, labels = load_split(uri, split, limit=limit, label_column=columns[0])
            others = {column: load_labels(uri, split, column)[: len(labels)] for column in columns[1:]}
            split_data[split] = (to_shape(images, shape), {columns[0]: labels, **others})
        eval_set = EvalSet(name, torch.from_numpy(split_data["train"][0]), torch.from_numpy(split_data["test"][0]))
        for label_set in label_sets:
            bank = label_set.apply(split_data["train"][1][label_set.column])
            query = label_set.apply(split_data["test"][1][label_set.column])
            eval_set.labels[label_set.name] = (torch.from_numpy(bank), torch.from_numpy(query), label_set.num_classes)
        sets.append(eval_set)
    return sets


@dataclass
class FeatureOptions:
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int = 1024
    device: torch.device | str = "cpu"
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    def extract(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return extract_features(
            backbone, images, self.mean, self.std, self.batch_size, self.device, self.autocast_dtype, self.channels_last
        )


def monitor_metrics(backbone: nn.Module, sets: list[EvalSet], config: EvaluationConfig, options: FeatureOptions) -> tuple[dict[str, float], torch.Tensor]:
    """The per-epoch kNN top-1: `knn_top1` (main dataset, first label set) and `knn_top1/<dataset>:<label set>`
    for every other; also returns the main dataset's query features (for the collapse signal)."""
    metrics, main_queries = {}, None
    for set_index, eval_set in enumerate(sets):
        bank = options.extract(backbone, eval_set.bank_images)
        queries = options.extract(backbone, eval_set.query_images)
        main_queries = queries if main_queries is None else main_queries
        for label_index, (name, (bank_labels, query_labels, classes)) in enumerate(eval_set.labels.items()):
            scored = (bank_labels >= 0, query_labels >= 0)
            scores = knn_scores(queries[scored[1]], bank[scored[0]], bank_labels[scored[0]], classes, config.knn_k, config.knn_temperature)
            top1 = topk_accuracy(scores, query_labels[scored[1]], (1,))[1]
            metrics["knn_top1" if set_index == label_index == 0 else f"knn_top1/{eval_set.key(name)}"] = top1
    return metrics, main_queries


def full_evaluation(
    backbone: nn.Module, sets: list[EvalSet], config: EvaluationConfig, options: FeatureOptions, *, log=None
) -> list[dict[str, Any]]:
    """One row per (dataset, label set, budget): kNN top-1 / top-5 (the monitor's protocol, bank = the budget's
    labelled train images) and linear-probe top-1 / top-5 (fit on the same images' features)."""
    rows = []
    for eval_set in sets:
        started = time.perf_counter()
        bank = options.extract(backbone, eval_set.bank_images)
        queries = options.extract(backbone, eval_set.query_images)
        device = torch.device(options.device)
        for name, (bank_labels, query_labels, classes) in eval_set.labels.items():
            scored = query_labels >= 0
            query_features, query_targets = queries[scored].to(device), query_labels[scored].to(device)
            for budget in config.budgets:
                chosen = torch.from_numpy(budget_indices(bank_labels.numpy(), budget, config.budget_seed))
                bank_features, bank_targets = bank[chosen].to(device), bank_labels[chosen].to(device)
                knn = topk_accuracy(
                    knn_scores(query_features, bank_features, bank_targets, classes, config.knn_k, config.knn_temperature),
                    query_targets,
                )
                with torch.enable_grad():
                    probe = train_linear_probe(bank_features, bank_targets, classes, config.probe, seed=config.budget_seed)
                probed = probe_accuracy(probe, query_features, query_targets)
                rows.append({
                    "dataset": eval_set.dataset, "label_set": name, "budget": budget_name(budget),
                    "classes": classes, "bank_size": int(len(chosen)), "queries": int(scored.sum()),
                    # top-5 of 5 or fewer classes is always right: None (null in eval.json), not 1.0
                    **{key: None if math.isnan(value) else value for key, value in (
                        ("knn_top1", knn[1]), ("knn_top5", knn[5]), ("probe_top1", probed[1]), ("probe_top5", probed[5]))},
                })
                if log:
                    log(f"{eval_set.key(name)} budget {budget_name(budget)} ({len(chosen)} labels): kNN top-1 "
                        f"{knn[1]:.4f} top-5 {knn[5]:.4f}, probe top-1 {probed[1]:.4f} top-5 {probed[5]:.4f}")
        if log:
            log(f"{eval_set.dataset}: evaluated in {time.perf_counter() - started:.1f}s")
    return rows


def flat_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Rows as report keys: eval/<dataset>:<label set>/<budget>/<metric>."""
    return {
        f"eval/{row['dataset']}:{row['label_set']}/{row['budget']}/{metric}": row[metric]
        for row in rows for metric in ("knn_top1", "knn_top5", "probe_top1", "probe_top5") if row[metric] is not None
    }


def protocol(config: EvaluationConfig) -> dict[str, Any]:
    """What the numbers mean, written next to them."""
    return {
        "features": "backbone output before the projector, L2-normalised, eval mode, clean images",
        "knn": {"k": config.knn_k, "temperature": config.knn_temperature, "similarity": "cosine",
                "vote": "sum of exp(sim / T) per class", "bank": "labelled train images (the budget)",
                "queries": "test split"},
        "probe": {"model": "standardised features -> linear layer with bias", **config.probe.model_dump(),
                  "optimizer": "AdamW, cosine lr"},
        "budgets": [budget_name(budget) for budget in config.budgets], "budget_seed": config.budget_seed,
        "bank_limit": config.bank_limit, "query_limit": config.query_limit,
    }


def eval_document(run: RunConfig, epoch: int, rows: list[dict[str, Any]], checkpoint: str | None = None) -> str:
    """eval.json's text: where the numbers come from, the protocol, and one row per dataset / label set / budget."""
    document = {
        "checkpoint": checkpoint, "epoch": epoch, "method": run.method.name, "data": run.data.model_dump(mode="json"),
        "protocol": protocol(run.evaluation), "results": rows,
    }
    return json.dumps(document, indent=2) + "\n"


def find_checkpoint(uri: str) -> str:
    """The checkpoint directory CHECKPOINT names: a directory holding state.pt, state.pt itself, or a run
    directory holding checkpoint_* directories (the newest is taken)."""
    from raysl.storage import exists, list_dirs

    uri = uri.rstrip("/")
    if uri.endswith("/state.pt") and exists(uri):
        return uri.rsplit("/", 1)[0]
    if exists(f"{uri}/state.pt"):
        return uri
    checkpoints = [name for name in list_dirs(uri) if name.startswith("checkpoint_")]
    for name in sorted(checkpoints, reverse=True):
        if exists(f"{uri}/{name}/state.pt"):
            return f"{uri}/{name}"
    raise UserError(f"{uri}: no checkpoint there (expected state.pt, or checkpoint_* directories holding one)")


def load_checkpoint(directory: str) -> dict[str, Any]:
    """A checkpoint's state (weights_only: tensors and plain containers, never code) from a local path or URI."""
    import io

    from raysl.storage import read_bytes

    data = read_bytes(f"{directory}/state.pt")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, refused global
        raise UserError(f"{directory}/state.pt cannot be loaded: {type(error).__name__}: {str(error).splitlines()[0]}") from None
