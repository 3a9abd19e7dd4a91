"""Synthesis speed and quality of BN-statistics inversion (issue: data-free sources; data-free on any teacher).

Makes 512 images at 32x32 for cifar10jpeg-resnet56 with the settings of
recipes/resnet56-synthetic512.yaml, from an empty folder, and records the wall time, the
teacher's agreement with the intended classes and the BN-statistics distance. For scale it also
measures the same distance for 512 real CIFAR-10 training images and for 512 noise images (at the
same batch size), since the number means little on its own.

``--variants LABEL:key=value,...`` makes the set once per variant in the same invocation, with
synthesizer settings over the recipe's (``bn-inversion-512:`` is the recipe itself), so their times
compare as ratios measured in one run (each row's ``speedup`` is the first variant's time over its
own). Whether a faster variant's images are as good downstream is for ``benchmarks.data_free
--synthesis``. The key ``statistics=reduction`` is the benchmark's own, not a synthesizer setting: that
variant measures the BN statistics as the code did before they came from torch's batch-norm kernel
(mean and mean square reduced from a float32 copy of each activation), so old and new time in one run.
The key ``method`` picks another synthesizer (``method=generator``: the meta-learned generator, from its own
defaults rather than the recipe's inversion settings), so the synthesizers time against each other in one run.

    python -m benchmarks.synthesis_speed
    python -m benchmarks.synthesis_speed --variants fp32-200: bf16-200:precision=bf16 \\
        bf16-100:precision=bf16,steps=100
    python -m benchmarks.synthesis_speed --variants reduction-bf16:precision=bf16,statistics=reduction \\
        kernel-bf16:precision=bf16
    python -m benchmarks.synthesis_speed --variants bn-inversion-now: generator-fp32:method=generator \\
        generator-bf16:method=generator,precision=bf16
    python -m benchmarks.write_benchmarks

Run it on a quiet machine: anything else using the cores slows synthesis down.
"""

from __future__ import annotations

import argparse
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from benchmarks import engine_grid
from benchmarks.recovery_settings import parse_variant
from dfpractise.engine import load_teacher
from dfpractise.progress import Progress
from dfpractise.recipe import resolve_config
from dfpractise.sources import create_source
from dfpractise.synthesis import synthesize_for_model
import synthesizers.bn_stats
from synthesizers import quality_report

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "resnet56-synthetic512.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "synthesis.json")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-synthesis")
    parser.add_argument("--variants", nargs="+", default=["bn-inversion-512:"], metavar="LABEL:KEY=VALUE,...",
                        help="synthesizer settings over the recipe's, one set per variant, timed in this run")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    variants = [parse_variant(text) for text in args.variants]

    engine_grid.CODE_VERSION = engine_grid.commit()
    config = resolve_config(RECIPE, {})
    teacher, _, _ = load_teacher(config.model, config.weights)
    cfg = teacher.model_spec
    reference = references(config, teacher)
    results = engine_grid.load_results(args.results)
    first = None
    for label, changes in variants:
        method = changes.get("method", "bn-inversion")
        # the recipe's settings are BN inversion's; another synthesizer starts from its own defaults
        options = {**(config.data.synthesis if method == "bn-inversion" else {}), **changes}
        options.pop("method", None)
        statistics = options.pop("statistics", "kernel")
        folder = args.out / label
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        with moments(statistics):
            made = synthesize_for_model(
                method, config.model, config.weights, config.data.num_images, folder, seed=config.seed,
                options=options, progress=Progress(quiet=args.quiet),
            )
        seconds = time.perf_counter() - start
        first = first or (label, made.report["synthesis_seconds"])
        results["runs"][label] = {
            "recipe": RECIPE.name,
            "method": method,
            "changes": changes,
            "num_images": config.data.num_images,
            "settings": made.report["settings"],
            "seconds": round(seconds, 1),
            "synthesis_seconds": made.report["synthesis_seconds"],
            "baseline": first[0],
            "speedup": round(first[1] / made.report["synthesis_seconds"], 2),
            "agreement": made.report["agreement"],
            "teacher_confidence": made.report["teacher_confidence"],
            "bn_distance": made.report["bn_distance"],
            "real_bn_distance": reference["real"]["bn_distance"],
            "real_agreement": reference["real"]["agreement"],
            "noise_bn_distance": reference["noise"]["bn_distance"],
            "image_size": cfg.input_size,
            "date": engine_grid.dt.date.today().isoformat(),
            "machine": engine_grid.machine(),
            "commit": engine_grid.CODE_VERSION,
        }
        engine_grid.save_results(results, args.results)
        row = results["runs"][label]
        print(f"{label}: 512 images in {row['synthesis_seconds']:.0f} s ({row['speedup']:.2f}x {first[0]}), "
              f"agreement {100 * row['agreement']:.1f}%, BN distance {row['bn_distance']:.1f} (real "
              f"{row['real_bn_distance']:.1f}, noise {row['noise_bn_distance']:.1f})", flush=True)


class ReductionMoments(torch.autograd.Function):
    """The BN statistics as measured before ``batch_norm_update_stats`` (the reference of
    ``statistics=reduction``): mean and mean square reduced from a float32 copy of the channels-last
    view, the gradient computed in float32 and cast back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.movedim(1, -1).reshape(-1, x.shape[1]).float()
        mean = flat.mean(0)
        var = ((flat * flat).mean(0) - mean * mean).clamp_min_(0)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx: Any, g_mean: torch.Tensor, g_var: torch.Tensor) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul((g_mean / n).view(shape), x - mean.view(shape), (2 * g_var / n).view(shape)).to(x.dtype)


@contextmanager
def moments(statistics: str) -> Iterator[None]:
    """The BN hooks measure with ``statistics`` ("kernel": today's code; "reduction": the reference) in the block."""
    if statistics not in ("kernel", "reduction"):
        raise SystemExit(f"statistics must be kernel or reduction, got {statistics!r}")
    today = synthesizers.bn_stats.ChannelMoments
    if statistics == "reduction":
        synthesizers.bn_stats.ChannelMoments = ReductionMoments
    try:
        yield
    finally:
        synthesizers.bn_stats.ChannelMoments = today


def references(config, teacher) -> dict[str, dict]:
    """The quality report of 512 real training images and of 512 noise images: the scale of the numbers."""
    cfg = teacher.model_spec
    batch = config.data.synthesis.get("batch_size", 256)
    real = create_source("real", root=str(Path(config.data.eval_path).parent / "train")).load(  # train, not val
        config.data.num_images, cfg.input_size, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    noise = (torch.randn(config.data.num_images, 3, cfg.input_size, cfg.input_size, generator=generator)
             * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)).clamp(0, 1)
    return {
        name: quality_report(teacher, tiny_images, labels, cfg.mean, cfg.std, batch_size=batch)
        for name, tiny_images, labels in [("real", real.images, real.labels), ("noise", noise, None)]
    }


if __name__ == "__main__":
    main()
