"""Is a synthetic set any good? Numbers and a picture, for the run folder.

Synthesis has no ground truth, so the report says what can be checked: does the teacher see the
class each image was made for (agreement), how far the set's BatchNorm statistics are from the
teacher's running statistics (lower is closer to the teacher's training data; a real-data batch
gives a reference value), how diverse the set is as the teacher sees it (mean pairwise cosine
distance between the teacher's penultimate features, over the set and within each intended
class: near-duplicate images, a collapsed synthesizer, show as a value near 0), how classes are
spread, and a grid of samples for a person to look at.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .bn_stats import batchnorm_layers, bn_statistics


@torch.no_grad()
def quality_report(
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Teacher agreement, mean BN-statistics distance per batch, feature diversity, class histograms.

    ``feature_diversity`` is the mean cosine distance between the teacher's penultimate features
    (the input of its last ``nn.Linear``) of two different images of the set, from 0 (all alike)
    up (about 1 for unrelated directions; at most 2); ``feature_diversity_in_class`` the same
    within each intended class, averaged over the classes with two images or more (so a set whose
    classes each collapsed to one image shows it even though the classes differ). Both are None
    where they cannot be measured (no ``nn.Linear``, a single image, no labels).
    """
    teacher.eval()
    device = next(teacher.parameters()).device
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    predictions, confidences, distances = [], [], []
    has_bn = bool(batchnorm_layers(teacher))
    features: list[torch.Tensor] = []
    with bn_statistics(teacher) as stats, _penultimate(teacher) as seen:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            probs = teacher((batch - mean_t) / std_t).softmax(1)
            if seen is not None and seen:
                features.append(seen.pop().flatten(1).float().cpu())
                seen.clear()
            if has_bn:
                distances.append(float(sum(stats.pop())))
            confidence, predicted = probs.max(1)
            predictions.append(predicted.cpu())
            confidences.append(confidence.cpu())
    predicted = torch.cat(predictions)
    num_classes = int(max(predicted.max().item(), labels.max().item() if labels is not None else 0)) + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    report: dict[str, Any] = {
        "images": len(images),
        "teacher_confidence": round(float(torch.cat(confidences).mean()), 4),
        "bn_distance": round(sum(distances) / len(distances), 4) if distances else None,
        "bn_distance_batch": min(batch_size, len(images)),
        "predicted_histogram": _histogram(predicted, names),
    }
    if labels is not None:
        report["agreement"] = round(float((predicted == labels.cpu()).float().mean()), 4)
        report["label_histogram"] = _histogram(labels.cpu(), names)
    report.update(_diversity(torch.cat(features) if features else None, labels))
    return report


def feature_diversity(features: torch.Tensor) -> float | None:
    """Mean cosine distance ``1 - cos(f_i, f_j)`` over the pairs ``i != j`` of rows of ``features``.

    O(N x D) rather than a N x N matrix: the sum of all pairwise cosines of the unit rows ``u`` is
    ``|sum u|^2`` less their own ``sum |u_i|^2``. A zero row (all features 0) counts as unlike any
    other. None for fewer than two rows.
    """
    count = len(features)
    if count < 2:
        return None
    units = torch.nn.functional.normalize(features.double().flatten(1), dim=1)
    cosines = float(units.sum(0).square().sum() - units.square().sum())
    return 1.0 - cosines / (count * (count - 1))


def _diversity(features: torch.Tensor | None, labels: torch.Tensor | None) -> dict[str, float | None]:
    whole = feature_diversity(features) if features is not None else None
    in_class = None
    if features is not None and labels is not None:
        labels = labels.cpu()
        values = [feature_diversity(features[labels == c]) for c in labels.unique().tolist()]
        values = [v for v in values if v is not None]
        in_class = sum(values) / len(values) if values else None
    return {"feature_diversity": _round(whole), "feature_diversity_in_class": _round(in_class)}


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


@contextmanager
def _penultimate(model: nn.Module) -> Iterator[list[torch.Tensor] | None]:
    """The input of ``model``'s last ``nn.Linear`` at each forward (None: it has no Linear)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        yield None
        return
    seen: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


def _histogram(values: torch.Tensor, names: list[str]) -> dict[str, int]:
    counts = torch.bincount(values, minlength=len(names)).tolist()
    return {(names[i] if i < len(names) else str(i)): int(c) for i, c in enumerate(counts)}
