"""Evaluation sets and the full evaluation: kNN top-1 / top-5 and a linear probe per dataset, label set and
labeled budget, on frozen backbone features computed once per dataset. Pure: no Ray.

An evaluation set is one prepared dataset's clean train split (the kNN bank, the probe's training data) and
test split (the queries), brought to the model's input shape, with the label sets it is scored against:
the main dataset's `evaluation.label_sets`, and `label` for each pool dataset. Results are named
`<dataset>:<label set>`; the monitor's `knn_top1` is the main dataset's first label set.

The images are read on demand (raysl.data.eval_images.EvalImages), never all held: with a process group, every rank
computes the features of its share of the bank and of the queries; the bank's features are gathered (every
rank then holds the whole bank, as float16 on its device by default), each rank scores its own queries against
the whole bank, and the counts are summed. One rank gives the same figure (tested). Memory is features (a
1.28M-image ResNet-50 bank: 1.28M x 2048 x 2 bytes = 5.2 GB per device), not pixels.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from raysl.config import EvaluationConfig, RunConfig
from raysl.data.conditions import budget_indices, budget_name
from raysl.data.eval_images import EvalImages, balanced_rows, share_bounds
from raysl.data.labelsets import LabelSet, resolve_label_set
from raysl.ingest.dataset import read_manifest, split_labels
from raysl.methods.distributed import broadcast_buffers, gather_uneven, rank_and_world_size, sum_over_ranks
from raysl.training.monitor import extract_features, knn_scores, topk_accuracy
from raysl.training.probe import probe_accuracy, train_linear_probe


class ArrayImages:
    """Evaluation images already in memory (uint8 (N, H, W, C), numpy or torch), with EvalImages' interface."""

    def __init__(self, images):
        self.images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)

    def __len__(self) -> int:
        return len(self.images)

    def bounds(self, rank: int, world: int) -> tuple[int, int]:
        return share_bounds(len(self), rank, world)

    def array(self) -> np.ndarray:
        return self.images

    def batches(self, rank: int = 0, world: int = 1, batch_size: int = 256) -> Iterator[np.ndarray]:
        start, stop = self.bounds(rank, world)
        for position in range(start, stop, batch_size):
            yield self.images[position : min(stop, position + batch_size)]


@dataclass
class EvalSet:
    """One dataset's clean bank and query images (EvalImages, or in-memory images) and, per label set,
    (bank labels, query labels, classes) of every bank and query row."""

    dataset: str
    bank_images: Any
    query_images: Any
    labels: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=dict)

    def __post_init__(self):
        if not hasattr(self.bank_images, "batches"):
            self.bank_images = ArrayImages(self.bank_images)
        if not hasattr(self.query_images, "batches"):
            self.query_images = ArrayImages(self.query_images)

    def key(self, label_set: str) -> str:
        return f"{self.dataset}:{label_set}"


def label_sets_of(run: RunConfig, manifest: dict) -> list[LabelSet]:
    """The main dataset's label sets (checked against its classes; a UserError names the field or file)."""
    return [resolve_label_set(spec, manifest) for spec in run.evaluation.label_sets]


def load_eval_sets(run: RunConfig, data_uri: str, pool_uris: list[str] | tuple[str, ...] = ()) -> list[EvalSet]:
    """The main dataset's evaluation set (its label sets), then one per pool dataset (its `label`), all in the
    main dataset's image shape. Reads labels only; the images are read when features are computed.
    evaluation.bank_limit keeps a class-balanced bank (by the first label set's column), query_limit the first
    N test rows."""
    from raysl.data.pretraining import main_shape

    manifest = read_manifest(data_uri)
    shape = main_shape(run, manifest)
    config = run.evaluation
    sets = []
    sources = [(run.data.label, data_uri, label_sets_of(run, manifest))]
    for entry, uri in zip(run.data.pool, pool_uris):
        sources.append((entry.label, uri, [resolve_label_set("label", read_manifest(uri), field=f"data.pool {entry.label}")]))
    for name, uri, label_sets in sources:
        columns = list(dict.fromkeys(label_set.column for label_set in label_sets))
        dataset_manifest = read_manifest(uri)
        images, labels = {}, {}
        for split in ("train", "test"):
            split_columns = split_labels(uri, dataset_manifest, split, columns)
            count = len(split_columns[columns[0]])
            rows = (balanced_rows(split_columns[columns[0]], config.bank_limit) if split == "train"
                    else np.arange(min(count, config.query_limit or count), dtype=np.int64))
            # The pixel cache is per rank; sized here for one rank (a rank's share is smaller).
            images[split] = EvalImages(uri, dataset_manifest, split, shape, rows, crop_fraction=config.crop_fraction,
                                       cache_bytes=config.pixel_cache_mb * 2**20)
            labels[split] = {column: values[rows] for column, values in split_columns.items()}
        eval_set = EvalSet(name, images["train"], images["test"])
        for label_set in label_sets:
            bank = label_set.apply(labels["train"][label_set.column])
            query = label_set.apply(labels["test"][label_set.column])
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
    feature_dtype: torch.dtype = torch.float32

    def extract(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Features of in-memory images (float32, on CPU)."""
        return extract_features(
            backbone, images, self.mean, self.std, self.batch_size, self.device, self.autocast_dtype, self.channels_last
        )

    def features(self, backbone: nn.Module, images, *, gather: bool) -> torch.Tensor:
        """Features (feature_dtype, on the device) of this rank's share of `images` (EvalImages or ArrayImages),
        decoded a batch ahead in a thread; with gather, every rank's share concatenated in rank order."""
        rank, world = rank_and_world_size()
        parts = [
            extract_features(backbone, torch.from_numpy(np.ascontiguousarray(batch)), self.mean, self.std, self.batch_size,
                             self.device, self.autocast_dtype, self.channels_last, dtype=self.feature_dtype, on_device=True)
            for batch in prefetched(images.batches(rank, world, self.batch_size))
        ]
        local = torch.cat(parts) if parts else torch.empty((0, feature_width(backbone)), dtype=self.feature_dtype,
                                                          device=self.device)
        if gather and world > 1:
            counts = [stop - start for start, stop in (images.bounds(other, world) for other in range(world))]
            return gather_uneven(local, counts)
        return local


def feature_width(backbone: nn.Module) -> int:
    return int(getattr(backbone, "out_dim", 0) or getattr(getattr(backbone, "_orig_mod", None), "out_dim", 0))


def prefetched(batches: Iterator, depth: int = 2) -> Iterator:
    """`batches` made in a background thread, up to `depth` ahead (decoding overlaps the forward passes);
    an exception there is raised here."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def hand(item) -> bool:
        """Put `item` unless the consumer has gone (then False)."""
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not hand(batch):
                    return
        except BaseException as error:  # handed to the consumer
            hand(error)
            return
        hand(done)

    thread = threading.Thread(target=produce, daemon=True, name="raysl-eval-decode")
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def monitor_metrics(backbone: nn.Module, sets: list[EvalSet], config: EvaluationConfig, options: FeatureOptions) -> tuple[dict[str, float], torch.Tensor]:
    """The per-epoch kNN top-1: `knn_top1` (main dataset, first label set) and `knn_top1/<dataset>:<label set>`
    for every other; also returns this rank's main-dataset query features (for the collapse signal). With a
    process group every rank must call it: each scores its share of the queries against the gathered bank."""
    rank, world = rank_and_world_size()
    broadcast_buffers(backbone)  # one model's batch-norm statistics for every rank's share
    metrics, main_queries = {}, None
    for set_index, eval_set in enumerate(sets):
        bank = options.features(backbone, eval_set.bank_images, gather=True)
        queries = options.features(backbone, eval_set.query_images, gather=False)
        start, stop = eval_set.query_images.bounds(rank, world)
        main_queries = queries if main_queries is None else main_queries
        counts = []
        for name, (bank_labels, query_labels, classes) in eval_set.labels.items():
            bank_labels = bank_labels.to(bank.device)
            local_labels = query_labels[start:stop].to(queries.device)
            labelled = bank_labels >= 0
            # A copy of the bank only when some rows are unlabelled in this set; `bank` itself stays whole for
            # the next label set.
            set_bank = bank
            if not bool(labelled.all()):
                set_bank, bank_labels = bank[labelled], bank_labels[labelled]
            scored = local_labels >= 0
            correct = 0
            if len(bank_labels) and bool(scored.any()):
                scores = knn_scores(queries[scored], set_bank, bank_labels, classes, config.knn_k, config.knn_temperature)
                correct = (scores.argmax(dim=1) == local_labels[scored]).sum().item()
            counts += [float(correct), float(scored.sum().item())]
        totals = sum_over_ranks(counts, options.device)
        for label_index, name in enumerate(eval_set.labels):
            correct, total = totals[2 * label_index], totals[2 * label_index + 1]
            top1 = correct / total if total else float("nan")
            metrics["knn_top1" if set_index == label_index == 0 else f"knn_top1/{eval_set.key(name)}"] = top1
    return metrics, main_queries


def full_evaluation(
    backbone: nn.Module, sets: list[EvalSet], config: EvaluationConfig, options: FeatureOptions, *, log=None
) -> list[dict[str, Any]]:
    """One row per (dataset, label set, budget): kNN top-1 / top-5 (the monitor's protocol, bank = the budget's
    labelled train images) and linear-probe top-1 / top-5 (fit on the same images' stored features: each
    dataset's features are computed once, then every budget's kNN and probe use them). With a process group
    every rank computes its share of the features; rank 0 scores and returns the rows, the others []."""
    rank, _ = rank_and_world_size()
    broadcast_buffers(backbone)
    # Every set's features first (the ranks' collectives), then rank 0 scores: the other ranks never wait in a
    # collective while rank 0 trains probes (a long wait would hit the process group's timeout).
    features = []
    for eval_set in sets:
        started = time.perf_counter()
        features.append((options.features(backbone, eval_set.bank_images, gather=True),
                         options.features(backbone, eval_set.query_images, gather=True), started))
    if rank != 0:
        return []
    rows = []
    for eval_set, (bank, queries, started) in zip(sets, features):
        device = bank.device
        for name, (bank_labels, query_labels, classes) in eval_set.labels.items():
            scored = query_labels >= 0
            # float32 (the probe trains in it), indexed first: one budget's copy at a time
            query_features, query_targets = queries[scored.to(device)].float(), query_labels[scored].to(device)
            for budget in config.budgets:
                chosen = torch.from_numpy(budget_indices(bank_labels.numpy(), budget, config.budget_seed))
                bank_features, bank_targets = bank[chosen.to(device)].float(), bank_labels[chosen].to(device)
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
        "bank_limit": config.bank_limit, "bank_limit_rule": "class-balanced, first rows in stored order",
        "query_limit": config.query_limit, "feature_dtype": config.feature_dtype,
    }


def eval_document(run: RunConfig, epoch: int, rows: list[dict[str, Any]], checkpoint: str | None = None) -> str:
    """eval.json's text: where the numbers come from, the protocol, and one row per dataset / label set / budget."""
    document = {
        "checkpoint": checkpoint, "epoch": epoch, "method": run.method.name, "data": run.data.model_dump(mode="json"),
        "protocol": protocol(run.evaluation), "results": rows,
    }
    return json.dumps(document, indent=2) + "\n"
