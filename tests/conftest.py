"""Shared fixtures: the offline assets mirror (see ../shared/assets/README.md)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The assets mirror from $DFPRACTISE_ASSETS (default: ../shared/assets); skip tests if absent."""
    path = Path(os.environ.get("DFPRACTISE_ASSETS") or REPO_ROOT.parent / "shared" / "assets")
    path = path.expanduser().resolve()
    if not (path / "weights").is_dir():
        pytest.skip(f"offline assets not found at {path} (set DFPRACTISE_ASSETS to the mirror)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _assets_env(tmp_path_factory):
    """Let tests that name weights (resolved through $DFPRACTISE_ASSETS) run without the Makefile,
    and keep what runs cache (latency tables, synthetic sets) out of the user's own cache."""
    if not os.environ.get("DFPRACTISE_ASSETS"):
        default = REPO_ROOT.parent / "shared" / "assets"
        if default.is_dir():
            os.environ["DFPRACTISE_ASSETS"] = str(default.resolve())
    previous = os.environ.get("DFPRACTISE_CACHE")
    os.environ["DFPRACTISE_CACHE"] = str(tmp_path_factory.mktemp("dfpractise-cache"))
    yield
    if previous is None:
        os.environ.pop("DFPRACTISE_CACHE", None)
    else:
        os.environ["DFPRACTISE_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def _ctrl_c_raises_keyboard_interrupt():
    """Make a simulated Ctrl-C (``interrupting_progress``) land however pytest was started.

    A shell without job control starts background commands (``make test &`` in a script, some CI
    runners) with SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the SIGINT
    a test sends is dropped and the interrupted command exits 0. A terminal never ignores Ctrl-C,
    so the tests restore the handler a user's shell gives the tool.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def features_without(model, skip, x: torch.Tensor) -> torch.Tensor:
    """The features of one of this project's models with the named blocks skipped, computed from
    its own ``feature_layers`` (children of its stages run one by one).

    A reference for dropping that shares no code with discovery: a pruned copy must compute this.
    """
    for name, module in model.feature_layers():
        children = list(module.named_children()) if isinstance(module, torch.nn.Sequential) else []
        if not children:
            x = x if name in skip else module(x)
            continue
        for child, block in children:
            if f"{name}.{child}" not in skip:
                x = block(x)
    return x


def tiny_run_config(assets_dir: Path, **changes):
    """A run of seconds: ResNet-20 with its offline weights, 12 real images, two blocks dropped by
    count, one timing round, a few scoring and recovery steps. ``changes`` by recipe key
    (``seed=5``, ``**{"recovery.iterations": 80}``)."""
    from dfpractise.config import RunConfig

    config = RunConfig(model="cifar10_resnet20", weights="cifar10jpeg-resnet20", latency_reduction=None,
                       drop=2, seed=3)
    config.data.path = str(assets_dir / "cifar10-jpeg" / "train")
    config.data.num_images = 12
    config.latency.batch_size, config.latency.repeats, config.latency.warmup = 4, 1, 0
    config.scoring.iterations, config.scoring.batch_size = 2, 6
    config.recovery.iterations, config.recovery.batch_size, config.recovery.checkpoint_every = 6, 6, 2
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        setattr(getattr(config, section) if section else config, name, value)
    return config


def interrupting_progress(prefix: str, step: int):
    """A quiet ``Progress`` that sends SIGINT, as Ctrl-C would, at step ``step`` of the tasks
    whose description starts with ``prefix``."""
    from contextlib import contextmanager

    from dfpractise.progress import Progress

    class _Interrupting(Progress):
        @contextmanager
        def task(self, description, total):
            with super().task(description, total) as inner:
                if not description.startswith(prefix):
                    yield inner
                    return

                yield interrupting_task(inner, step)

    return _Interrupting(quiet=True)


def interrupting_task(inner, step: int):
    """A progress task that passes its steps on to ``inner`` and sends SIGINT, as Ctrl-C would, at ``step``."""

    class Counting:
        count = 0

        def advance(self_, steps=1, **fields):
            self_.count += steps
            inner.advance(steps, **fields)
            if self_.count == step:
                os.kill(os.getpid(), signal.SIGINT)

    return Counting()


class SmallBNNet(nn.Module):
    """A tiny teacher for the synthesizer tests: conv-BN-ReLU twice and a linear head, with running
    statistics from a few noise batches (seeded, so the same every time)."""

    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(8, classes)
        with torch.no_grad():
            for _ in range(5):
                self(torch.rand(16, 3, 16, 16) * 0.5 + 0.25)
        self.eval()

    def forward(self, x):
        return self.head(self.features(x))
