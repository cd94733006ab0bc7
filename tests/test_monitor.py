"""The kNN monitor against a brute-force reference, and the collapse signal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raysl.training.monitor import embedding_std, knn_predict, knn_top1


def knn_brute_force(queries, bank, labels, num_classes, k, temperature):
    """Per query: cosine to every bank entry, the k largest, weights exp(sim / T), summed per class."""
    predictions = []
    for query in queries:
        similarities = [(torch.dot(query, entry).item(), int(label)) for entry, label in zip(bank, labels)]
        similarities.sort(key=lambda pair: -pair[0])
        scores = [0.0] * num_classes
        for similarity, label in similarities[:k]:
            scores[label] += math.exp(similarity / temperature)
        predictions.append(max(range(num_classes), key=lambda c: scores[c]))
    return torch.tensor(predictions)


@pytest.mark.parametrize("k, temperature, chunk", [(1, 0.1, 7), (5, 0.5, 512), (200, 0.1, 64)])
def test_knn_matches_brute_force(k, temperature, chunk):
    generator = torch.Generator().manual_seed(k)
    bank = F.normalize(torch.randn(150, 8, generator=generator), dim=1)
    queries = F.normalize(torch.randn(40, 8, generator=generator), dim=1)
    labels = torch.randint(0, 4, (150,), generator=generator)
    expected = knn_brute_force(queries, bank, labels, 4, min(k, 150), temperature)
    assert torch.equal(knn_predict(queries, bank, labels, 4, k, temperature, chunk_size=chunk), expected)


def test_knn_top1_is_one_for_separable_clusters_and_low_for_random_labels():
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 16, generator=generator), dim=1)
    labels = torch.arange(300) % 3
    bank = F.normalize(centres[labels] + 0.05 * torch.randn(300, 16, generator=generator), dim=1)
    query_labels = torch.arange(60) % 3
    queries = F.normalize(centres[query_labels] + 0.05 * torch.randn(60, 16, generator=generator), dim=1)
    assert knn_top1(queries, query_labels, bank, labels, 3, k=20) == 1.0
    shuffled = labels[torch.randperm(300, generator=generator)]
    assert knn_top1(queries, query_labels, bank, shuffled, 3, k=20) < 0.7


def test_embedding_std_detects_collapse():
    healthy = torch.randn(512, 64, generator=torch.Generator().manual_seed(0))
    assert embedding_std(healthy) == pytest.approx(1 / math.sqrt(64), rel=0.1)
    collapsed = torch.ones(512, 64) + 1e-4 * healthy
    assert embedding_std(collapsed) < 1e-3
