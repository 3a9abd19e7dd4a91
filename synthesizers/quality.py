"""Is a synthetic set any good? Numbers and a picture, for the run folder.

Synthesis has no ground truth, so the report says what can be checked: does the teacher see the
class each image was made for (agreement), how far the set's BatchNorm statistics are from the
teacher's running statistics (lower is closer to the teacher's training data; a real-data batch
gives a reference value), how classes are spread, and a grid of samples for a person to look at.
"""

from __future__ import annotations

from typing import Any, Sequence

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
    """Teacher agreement, mean BN-statistics distance per batch, class histograms."""
    teacher.eval()
    device = next(teacher.parameters()).device
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    predictions, confidences, distances = [], [], []
    has_bn = bool(batchnorm_layers(teacher))
    with bn_statistics(teacher) as stats:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            probs = teacher((batch - mean_t) / std_t).softmax(1)
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
    return report


def _histogram(values: torch.Tensor, names: list[str]) -> dict[str, int]:
    counts = torch.bincount(values, minlength=len(names)).tolist()
    return {(names[i] if i < len(names) else str(i)): int(c) for i, c in enumerate(counts)}
