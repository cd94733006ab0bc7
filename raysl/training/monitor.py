"""The kNN monitor and the collapse signal: pure functions of a model and tensors.

Protocol (InstDisc / MoCo CIFAR demo): backbone features L2-normalised; the bank is the clean train
split, the queries the test split; cosine similarity, top-k neighbours weighted exp(sim / T), the
class with the largest summed weight wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysl.views.batch import normalize


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
    on_device: bool = False,
) -> torch.Tensor:
    """L2-normalised backbone features of uint8 images (N, H, W, C), in eval mode: `dtype`, on CPU (or, with
    on_device, left on `device`)."""
    was_training = backbone.training
    backbone.eval()
    device = torch.device(device)
    features = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].permute(0, 3, 1, 2).to(device, non_blocking=True)
        batch = normalize(batch, mean.to(device), std.to(device), channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = backbone(batch)
        normalised = F.normalize(out.float(), dim=1).to(dtype)
        features.append(normalised if on_device else normalised.cpu())
    backbone.train(was_training)
    return torch.cat(features)


@torch.no_grad()
def knn_scores(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Class scores (q, C) of L2-normalised `queries`: the summed exp(sim / T) of their k nearest bank entries
    of each class. Chunked matmul + top-k, on whatever device the tensors are on. float16 features are matched
    in float16 on an accelerator (the weights and sums in float32); on a CPU, whose float16 matmul is ~3.5x
    slower than float32's, in float32 (a float32 copy of the bank for the call)."""
    k = min(k, bank.shape[0])
    if bank.device.type == "cpu" and bank.dtype != torch.float32:
        bank, queries = bank.float(), queries.float()
    queries = queries.to(bank.dtype)
    scores = []
    for start in range(0, queries.shape[0], chunk_size):
        similarity = queries[start : start + chunk_size] @ bank.T  # (q, B)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (q, k)
        weights = (top_similarity.float() / temperature).exp()
        chunk = torch.zeros(similarity.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        chunk.scatter_add_(1, bank_labels[top_index], weights)
        scores.append(chunk)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes, device=bank.device)


def knn_predict(
    queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, k: int = 200,
    temperature: float = 0.1, chunk_size: int = 512,
) -> torch.Tensor:
    """Predicted labels of L2-normalised `queries` from a weighted vote of their k nearest bank entries."""
    return knn_scores(queries, bank, bank_labels, num_classes, k, temperature, chunk_size).argmax(dim=1)


def knn_top1(
    queries: torch.Tensor, query_labels: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
    num_classes: int, k: int = 200, temperature: float = 0.1,
) -> float:
    predicted = knn_predict(queries, bank, bank_labels, num_classes, k, temperature)
    return (predicted == query_labels).float().mean().item()


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest scores, per k; NaN for a k > 1 that is not below
    the class count (top-5 of 4 classes is always right: no information)."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {k: hits[:, :k].any(dim=1).float().mean().item() if k == 1 or k < scores.shape[1] else float("nan") for k in ks}


def embedding_std(embeddings: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings: about 1/sqrt(d) when healthy, 0 when collapsed."""
    return F.normalize(embeddings.float(), dim=1).std(dim=0).mean().item()
