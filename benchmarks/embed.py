"""Taking a trained backbone away, end to end on real data: `raysl export` (state_dict, TorchScript, ONNX: seconds
and each format's max abs difference from the original) and `raysl embed` of the whole prepared dataset through
Ray Data (seconds, rows/s), then a kNN top-1 computed here from the embedding Parquet alone (train rows the bank,
test rows the queries, cosine, k=200, T=0.1, weighted vote: written from scratch, not raysl's monitor) side by
side with the figure the sweep measured for that checkpoint (model.json's knn_top1).
    .venv/bin/python benchmarks/embed.py EXPERIMENT_OR_CHECKPOINT DATA [--dtype float32] [--out DIR]
e.g. benchmarks/embed.py results/quickstart ~/.cache/raysl/datasets/fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

import raysl


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             k: int = 200, temperature: float = 0.1, classes: int | None = None) -> float:
    """Weighted kNN (Wu et al. 2018): the k most cosine-similar bank rows vote with exp(similarity / T)."""
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    queries = torch.nn.functional.normalize(queries.float(), dim=1)
    classes = classes or int(bank_labels.max()) + 1
    correct = 0
    for start in range(0, len(queries), 1024):
        similarity = queries[start : start + 1024] @ bank.T
        weights, neighbours = similarity.topk(k, dim=1)
        votes = torch.zeros(len(weights), classes).scatter_add_(1, bank_labels[neighbours], (weights / temperature).exp())
        correct += int((votes.argmax(1) == query_labels[start : start + 1024]).sum())
    return correct / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", help="an experiment directory (its best trial), a run or a checkpoint directory")
    parser.add_argument("data", help="the prepared dataset the sweep trained on")
    parser.add_argument("--dtype", default="float32", choices=["float16", "float32"])
    parser.add_argument("--out", default=None, help="where the export and the embeddings go (default: a temp dir)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="raysl-embed-"))

    started = time.perf_counter()
    document = raysl.export(args.source, str(out / "export"), formats=("state_dict", "torchscript", "onnx"))
    export_s = time.perf_counter() - started

    started = time.perf_counter()
    summary = raysl.embed(str(out / "export"), args.data, str(out / "embeddings"), dtype=args.dtype)
    embed_s = time.perf_counter() - started

    table = ds.dataset(summary["embeddings"], format="parquet").to_table(columns=["index", "split", "label", "embedding"])
    width = document["feature_dim"]
    vectors = np.asarray(pc.list_flatten(table.column("embedding")).to_numpy(zero_copy_only=False)).reshape(-1, width)
    splits = np.asarray(table.column("split").to_pylist())
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    train, test = splits == "train", splits == "test"
    indices = table.column("index").to_numpy()
    assert len(set(zip(splits.tolist(), indices.tolist()))) == len(table), "a row embedded twice"
    started = time.perf_counter()
    score = knn_top1(torch.from_numpy(vectors[train]), labels[train], torch.from_numpy(vectors[test]), labels[test])
    knn_s = time.perf_counter() - started

    rows = len(table)
    checks = {key: value for key, value in document.items() if key.endswith("_max_abs_difference")}
    print(f"checkpoint: {document['checkpoint']} (epoch {document['epoch']})")
    print(f"export (state_dict + TorchScript + ONNX): {export_s:.1f} s; parity: {json.dumps(checks)}")
    print(f"embed: {rows} rows ({int(train.sum())} train, {int(test.sum())} test), {width}-d {args.dtype}, "
          f"{embed_s:.1f} s = {rows / embed_s:.0f} rows/s (whole call, Ray start-up included); embed.json: "
          f"{json.dumps({key: summary[key] for key in ('rows', 'actors', 'seconds', 'device')})}")
    print(f"kNN top-1 from the Parquet here: {score:.4f} ({knn_s:.1f} s) | the sweep's monitor on the checkpoint: "
          f"{document['knn_top1']:.4f} | difference {score - document['knn_top1']:+.4f}")


if __name__ == "__main__":
    main()
