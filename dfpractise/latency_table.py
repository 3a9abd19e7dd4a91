"""The latency table: a model's measured ΔLat per candidate block, kept beyond one run.

Latency is a property of (architecture, device, batch, resolution, threads, runtime, library
versions), not of a run; and on a noisy machine two timings of the same block differ enough to
change which blocks a run drops. So the latency phase is cached under a key made of exactly those
facts (``$DFPRACTISE_CACHE/latency/KEY.json``): a second run on the same machine reuses the
table, skips the timing and selects the same blocks. The weights are not in the key (they do not
change the work a forward does); the architecture is, as a fingerprint of its modules and
parameter shapes, so a user's own module is keyed as well as a registered one.

A user may also pass a table measured elsewhere (``latency.table``: e.g. on the deployment
machine); it must describe the same architecture and candidates, and may come from another
machine, which is its point. The final cut of a run is always measured, never read from a table.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import ConfigError, DataError
from .latency import BlockLatencyProfile, Timing, resolve_profile
from .report import read_json, write_json

FORMAT = "dfpractise-latency-table/1"
# what must match for a table to describe this model's blocks at all; the rest says where it was measured
_SAME_WORK = ("architecture", "candidates", "batch_size", "resolution", "backend", "channels_last")


@dataclass(frozen=True)
class LatencyTable:
    """A measured profile and the facts it holds for."""

    key: dict[str, Any]
    profile: BlockLatencyProfile

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "profile": self.profile.to_json()}

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "LatencyTable":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{path} is not a {FORMAT} file")
        try:
            return cls(dict(data["key"]), BlockLatencyProfile.from_json(data["profile"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DataError(f"{path} is a damaged latency table; delete it or pass --remeasure-latency") from None


def table_key(model: nn.Module, blocks: list, timing: Timing, pool_identical: bool,
              profile: str = "auto") -> dict[str, Any]:
    """Everything the measured ΔLat of ``blocks`` depends on."""
    return {
        "profile": resolve_profile(profile, timing),
        "architecture": architecture_fingerprint(model),
        "candidates": [b.name for b in blocks],
        "batch_size": timing.batch_size,
        "resolution": timing.resolution,
        "backend": timing.backend,
        "channels_last": timing.channels_last,
        "device": _device_name(timing.device),
        "threads": timing.threads or torch.get_num_threads(),
        "repeats": timing.repeats,
        "warmup": timing.warmup,
        "pool_identical": pool_identical,
        "cpu": _cpu_name(),
        "versions": {name: _version(name) for name in ("torch", *(["onnxruntime"] if timing.backend != "torch" else []))},
    }


def architecture_fingerprint(model: nn.Module) -> str:
    """sha256 of the module tree: names, types and parameter/buffer shapes (not their values)."""
    parts = []
    for name, module in model.named_modules():
        tensors = [(n, tuple(t.shape), str(t.dtype)) for n, t in
                   [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]]
        parts.append((name, type(module).__qualname__, tensors, module.extra_repr()))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def cached_profile(
    model: nn.Module,
    blocks: list,
    timing: Timing,
    pool_identical: bool,
    measure: Callable[[], BlockLatencyProfile],
    *,
    table: str | Path | None = None,
    remeasure: bool = False,
    profile: str = "auto",
    log: Callable[[str], None] = lambda message: None,
) -> BlockLatencyProfile:
    """The blocks' latency profile: from the user's ``table``, else the machine's cache, else measured
    (and then kept in whichever of the two applies). ``remeasure`` measures anew and replaces it.
    ``profile``: how ``measure`` times the blocks (``latency.profile_blocks``), part of the key."""
    key = table_key(model, blocks, timing, pool_identical, profile)
    path = Path(table) if table is not None else cache_path(key)
    if path.exists() and not remeasure:
        saved = LatencyTable.from_json(read_json(path), path)
        if table is not None:
            _check_describes(saved.key, key, path)
            differs = [k for k in key if k not in _SAME_WORK and saved.key.get(k) != key[k]]
            log(f"latency: ΔLat read from {path}" + (f" (measured with other {', '.join(differs)})" if differs else ""))
            return saved.profile
        if saved.key == key:
            log(f"latency: ΔLat of this architecture and timing read from the cache ({path}); "
                "--remeasure-latency times it again")
            return saved.profile
    profile = measure()
    try:
        write_json(LatencyTable(key, profile).to_json(), path)
    except OSError as err:
        if table is not None:
            raise
        log(f"latency: the cache {path} cannot be written ({err.strerror}); measured ΔLat is kept in the run only")
    return profile


def cache_path(key: dict[str, Any]) -> Path:
    from .models.weights import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "latency" / f"{digest}.json"


def _check_describes(saved: dict[str, Any], wanted: dict[str, Any], path: Path) -> None:
    wrong = ["architecture (another module tree)" if k == "architecture" else f"{k} ({saved.get(k)!r} there, "
             f"{wanted[k]!r} here)" for k in _SAME_WORK if saved.get(k) != wanted[k]]
    if wrong:
        raise ConfigError(f"latency table {path} does not describe this model's blocks: {'; '.join(wrong)}; "
                          "give a new file name to measure one, or leave out --latency-table")


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return device


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
