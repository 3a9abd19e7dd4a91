"""How models hold up under common corruptions: top-1 per corruption and severity, side by side.

``evaluate_corruptions`` streams a labelled folder once: each decoded batch is scored clean, then
under every (corruption, severity), each corrupted batch made once (seeded by the run's seed, the
corruption, the severity and the batch) and given to every model, so all models see the same
images and memory stays flat. The aggregates are those of Hendrycks & Dietterich (ICLR 2019):

- mean corruption accuracy: top-1 averaged over corruptions and severities;
- mean corruption error (mCE) relative to a reference model (the teacher): per corruption, the
  model's summed error over severities divided by the reference's, averaged over corruptions,
  in percent (the reference scores 100);
- relative robustness: how many more points the model loses under corruption than on clean
  images, against the reference: (reference mCA - model mCA) - (reference clean - model clean).
  Positive means compression costs more under shift than it does on clean images.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .augment import normalize
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .errors import ConfigError, DataError
from .evaluate import Tally, labelled_batches
from .progress import Progress
from .sources.base import TinySet

REPORT = "robustness.json"
HEATMAP = "robustness.png"


@dataclass
class RobustnessResult:
    """Top-1 (percent) of each model, clean and per (corruption, severity), and its aggregates."""

    models: list[str]
    corruptions: list[str]
    severities: list[int]
    clean: dict[str, float]
    accuracy: dict[str, dict[str, dict[int, float]]]  # model -> corruption -> severity -> top-1
    count: int
    seed: int = 0
    reference: str = "teacher"
    info: dict[str, Any] = field(default_factory=dict)

    def family(self, model: str, corruption: str) -> float:
        """Top-1 under one corruption, averaged over the severities."""
        return statistics.mean(self.accuracy[model][corruption][s] for s in self.severities)

    def mean_corruption_accuracy(self, model: str) -> float:
        return statistics.mean(self.family(model, c) for c in self.corruptions)

    def corruption_error(self, model: str) -> float | None:
        """mCE against the reference, percent; None where the reference makes no error at all."""
        ratios = []
        for c in self.corruptions:
            own = sum(100.0 - self.accuracy[model][c][s] for s in self.severities)
            base = sum(100.0 - self.accuracy[self.reference][c][s] for s in self.severities)
            if base > 0:
                ratios.append(own / base)
        return 100.0 * statistics.mean(ratios) if ratios else None

    def relative_robustness(self, model: str) -> float:
        """Points lost under corruption beyond those lost on clean images, against the reference."""
        ref = self.reference
        corrupted = self.mean_corruption_accuracy(ref) - self.mean_corruption_accuracy(model)
        return corrupted - (self.clean[ref] - self.clean[model])

    def summary(self) -> dict[str, dict[str, float | None]]:
        return {
            m: {
                "clean": self.clean[m],
                "mean_corruption_accuracy": self.mean_corruption_accuracy(m),
                "mean_corruption_error": self.corruption_error(m),
                "relative_robustness": self.relative_robustness(m),
                **{f"family:{c}": self.family(m, c) for c in self.corruptions},
            }
            for m in self.models
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "models": self.models, "corruptions": self.corruptions, "severities": self.severities,
            "clean": self.clean,
            "accuracy": {m: {c: {str(s): v for s, v in by.items()} for c, by in cs.items()}
                         for m, cs in self.accuracy.items()},
            "count": self.count, "seed": self.seed, "reference": self.reference, "info": self.info,
            "summary": self.summary(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RobustnessResult":
        accuracy = {m: {c: {int(s): float(v) for s, v in by.items()} for c, by in cs.items()}
                    for m, cs in data["accuracy"].items()}
        return cls(list(data["models"]), list(data["corruptions"]), [int(s) for s in data["severities"]],
                   {m: float(v) for m, v in data["clean"].items()}, accuracy, int(data["count"]),
                   int(data.get("seed", 0)), data.get("reference", "teacher"), dict(data.get("info") or {}))


@dataclass
class ModelInput:
    """A model to score and the normalisation it expects."""

    model: nn.Module
    mean: Sequence[float]
    std: Sequence[float]


def evaluate_corruptions(
    models: dict[str, ModelInput | nn.Module],
    data: TinySet | str | Path,
    image_size: int,
    *,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    reference: str | None = None,
    progress: Progress | None = None,
    spec: Any = None,
) -> RobustnessResult:
    """Top-1 of every model on ``data``, clean and under every chosen corruption and severity.

    ``models`` maps names to modules (normalised with ``mean``/``std``) or to ``ModelInput`` with
    their own statistics. ``reference`` (default: the first model) is what mCE and relative
    robustness compare against. Corruptions are registered names (``dfpractise.corruptions``).
    ``spec``: the models' ``ModelSpec``, whose classes a folder's class folders are matched to
    (``evaluate.labelled_files``).
    """
    if not models:
        raise ConfigError("evaluate_corruptions needs at least one model")
    chosen = list(corruptions) if corruptions else CORRUPTIONS.names()
    for name in chosen:
        CORRUPTIONS.check(name)
    levels = sorted(set(severities))
    if not levels or any(s not in SEVERITIES for s in levels):
        raise ConfigError(f"severities must be among {', '.join(map(str, SEVERITIES))}, got {list(severities)}")
    inputs = {n: m if isinstance(m, ModelInput) else ModelInput(m, mean, std) for n, m in models.items()}
    reference = reference or next(iter(inputs))
    if reference not in inputs:
        raise ConfigError(f"reference {reference!r} is not one of the models ({', '.join(inputs)})")
    device = torch.device(device)
    progress = progress or Progress()
    conditions = [(c, s) for c in chosen for s in levels]
    clean = {n: Tally() for n in inputs}
    tallies = {n: {cond: Tally() for cond in conditions} for n in inputs}
    modes = {n: i.model.training for n, i in inputs.items()}
    for i in inputs.values():
        i.model.eval().to(device)
    batches, expected, where = labelled_batches(data, image_size, batch_size, limit, spec)
    total = -(-expected // batch_size) * (1 + len(conditions))
    try:
        with torch.inference_mode(), progress.task("Corruptions", total=total) as task:
            for index, (images, labels) in enumerate(batches):
                images, labels = images.to(device), labels.to(device)
                _score(inputs, images, labels, {n: clean[n] for n in inputs}, where)
                task.advance(1, condition="clean")
                for corruption, severity in conditions:
                    corrupted = corrupt(corruption, images, severity, _seed(seed, corruption, severity, index))
                    _score(inputs, corrupted, labels, {n: tallies[n][(corruption, severity)] for n in inputs}, where)
                    task.advance(1, condition=f"{corruption} {severity}")
    finally:
        batches.close()
        for n, i in inputs.items():
            i.model.train(modes[n])
    count = clean[reference].count
    if count == 0:
        raise DataError(f"none of the {expected} image files in {where} could be read")
    accuracy = {n: {c: {s: tallies[n][(c, s)].result()["top1"] for s in levels} for c in chosen} for n in inputs}
    return RobustnessResult(list(inputs), chosen, levels, {n: t.result()["top1"] for n, t in clean.items()},
                            accuracy, count, seed, reference, {"data": where, "image_size": image_size})


def _score(inputs: dict[str, ModelInput], images: torch.Tensor, labels: torch.Tensor,
           tallies: dict[str, Tally], where: str) -> None:
    for name, i in inputs.items():
        tallies[name].add(i.model(normalize(images, i.mean, i.std)), labels, name, where)


def _seed(seed: int, corruption: str, severity: int, batch: int) -> int:
    """The corruption seed of one batch: the same for every model, and for any choice of others."""
    digest = hashlib.sha256(f"{seed}:{corruption}:{severity}:{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def save_heatmap(result: RobustnessResult, path: str | Path) -> Path:
    """A PNG: top-1 per corruption (mean over severities, rows) and model (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from synthesizers.files import atomic_write

    rows = ["clean", *result.corruptions, "mean corruption"]
    values = [[result.clean[m] for m in result.models]]
    values += [[result.family(m, c) for m in result.models] for c in result.corruptions]
    values += [[result.mean_corruption_accuracy(m) for m in result.models]]
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(result.models), 0.9 + 0.38 * len(rows)))
    image = axis.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    axis.set_xticks(range(len(result.models)), result.models, rotation=20, ha="right")
    axis.set_yticks(range(len(rows)), [r.replace("_", " ") for r in rows])
    for y, row in enumerate(values):
        for x, value in enumerate(row):
            axis.text(x, y, f"{value:.1f}", ha="center", va="center", fontsize=8,
                      color="white" if value < 55 else "black")
    figure.colorbar(image, ax=axis, label="top-1 (%)")
    axis.set_title(f"top-1 under corruption, severities {', '.join(map(str, result.severities))}", fontsize=9)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return Path(path)


def robustness_of_runs(
    run_dirs: Sequence[str | Path],
    data: str | Path,
    out_dir: str | Path | None = None,
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    limit: int | None = None,
    progress: Progress | None = None,
) -> tuple[RobustnessResult, Path]:
    """The teacher and the pruned model of every run folder under corruption, side by side.

    Runs sharing a teacher (same architecture and weights) score it once, as ``teacher``; the
    pruned models are named after their folders. ``robustness.json`` and the heatmap go to
    ``out_dir`` (default: ``robustness`` in the first run folder).
    """
    from .models.adapter import spec_of
    from .runs import load_run

    if not run_dirs:
        raise ConfigError("give at least one run folder")
    models: dict[str, ModelInput] = {}
    teachers: dict[tuple, str] = {}
    sizes = set()
    classes = {}
    for path in run_dirs:
        run = load_run(path)
        spec = spec_of(run.teacher)
        sizes.add(spec.input_size)
        classes.setdefault((spec.num_classes, spec.class_names), spec)
        key = (run.manifest.get("architecture"), run.manifest.get("weights"), run.manifest.get("weights_sha256"))
        if run.manifest.get("weights") is None:
            key = (str(run.path),)  # random or in-folder weights: a teacher of its own
        if key not in teachers:
            teachers[key] = "teacher" if not teachers else f"teacher:{run.path.name}"
            models[teachers[key]] = ModelInput(run.teacher, spec.mean, spec.std)
        name = _unique(run.path.name, models)
        models[name] = ModelInput(run.pruned, spec.mean, spec.std)
    if len(sizes) > 1:
        raise ConfigError(f"the runs' models take different input sizes ({', '.join(map(str, sorted(sizes)))}); "
                          "score them separately")
    if len(classes) > 1:
        raise ConfigError("the runs' models predict different classes; score them separately")
    result = evaluate_corruptions(models, data, sizes.pop(), corruptions=corruptions, severities=severities,
                                  seed=seed, batch_size=batch_size, device=device, limit=limit,
                                  reference="teacher", progress=progress, spec=next(iter(classes.values())))
    result.info["runs"] = [str(p) for p in run_dirs]
    out = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "robustness"
    from .report import write_json

    write_json(result.to_json(), out / REPORT)
    try:
        save_heatmap(result, out / HEATMAP)
    except ImportError:
        (progress or Progress()).log("no heatmap: it needs matplotlib (pip install 'dfpractise[plots]')")
    return result, out


def _unique(name: str, taken: dict) -> str:
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name}-{index}", index + 1
    return candidate
