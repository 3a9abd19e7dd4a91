"""What this machine is: versions, devices and settings, for ``dfpractise env`` and each report.

Latency numbers mean little without the torch build, thread count and device they came from, and
a bug report needs the same facts; so both come from this one function.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from rich.table import Table

PACKAGES = ("dfpractise", "torch", "torchvision", "kornia", "numpy")
ENV_VARS = ("DFPRACTISE_ASSETS", "DFPRACTISE_CACHE")


def environment_info() -> dict[str, Any]:
    """Versions, CPU/GPU facts and dfpractise's environment variables, as a JSON-ready dict."""
    info: dict[str, Any] = {"dfpractise": _version("dfpractise")}
    info["python"] = platform.python_version()
    info["platform"] = platform.platform()
    for name in PACKAGES[1:]:
        info[name] = _version(name)
    info["cpu_count"] = os.cpu_count()
    info["cpus_usable"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info.update(_torch_info())
    for name in ENV_VARS:
        info[name] = os.environ.get(name)
    return info


def env_table(info: dict[str, Any]) -> Table:
    """Two columns, ready to paste into a bug report."""
    table = Table(title="dfpractise environment", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, _show(key, value))
    return table


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _torch_info() -> dict[str, Any]:
    """Threads and accelerators as torch sees them; all None when torch is missing."""
    keys = ("torch_threads", "torch_cuda_build", "cuda_available", "cuda_devices", "mps_available")
    if "torch" not in sys.modules and _version("torch") is None:
        return dict.fromkeys(keys)
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "mps_available": bool(mps is not None and mps.is_available()),
    }


def _show(key: str, value: Any) -> str:
    if value is None:
        if key in ENV_VARS:
            return "(not set)"
        return "not installed" if key in PACKAGES else "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


ACCELERATORS = ("cuda", "mps", "xpu")
"""Device types a run may use besides the CPU, when torch finds one."""


def available_devices() -> list[str]:
    """The devices this process can compute on: ``cpu``, then ``cuda:0``... and ``mps``/``xpu:0``..."""
    import torch

    found = ["cpu"]
    for kind in ACCELERATORS:
        backend = getattr(torch, kind, None) if kind != "mps" else getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            continue
        count = backend.device_count() if hasattr(backend, "device_count") else 1
        found.extend([kind] if kind == "mps" else [f"{kind}:{i}" for i in range(count)])
    return found


def check_device(name: str) -> str:
    """``name`` if this machine can compute on it, else a ConfigError saying which devices exist."""
    import torch

    from .errors import ConfigError

    here = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; the devices here are {', '.join(here)}") from None
    if device.type == "cpu":
        return name
    wanted = device.type if device.type == "mps" else f"{device.type}:{device.index or 0}"
    if device.type not in ACCELERATORS or wanted not in here:
        what = "is not a device to compute on" if device.type not in ACCELERATORS else "is not available here"
        raise ConfigError(f"device {name!r} {what}; the devices here are {', '.join(here)} (--device)")
    return name
