"""Known weight files: where to find them offline, how to download and verify them, how to load them.

Lookup never trusts a file by name alone: every registered file is checked against its full
sha256 (torchvision files against the hash prefix in their name, the torch.hub convention), so a
truncated download or a swapped mirror file fails loudly instead of giving a silently bad teacher.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from synthesizers.files import atomic_write
from synthesizers.registry import Registry
from torch import nn

from dfpractise.errors import ModelError

ASSETS_ENV = "DFPRACTISE_ASSETS"
CACHE_ENV = "DFPRACTISE_CACHE"
URL_ENV = "DFPRACTISE_WEIGHTS_URL"

_AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models"
_HUB_HASH = re.compile(r"-([a-f0-9]{8,})\.")
_PATH_SUFFIXES = {".pt", ".pth", ".th", ".bin", ".ckpt", ".safetensors"}


@dataclass(frozen=True)
class WeightSpec:
    """A weight file this project knows by name, for one registered architecture."""

    name: str
    arch: str
    filename: str
    sha256: str
    url: str | None


WEIGHTS: Registry[WeightSpec] = Registry("weights", "weights", unknown=ModelError, invalid=ModelError)


def register_weights(spec: WeightSpec) -> WeightSpec:
    """Make a weight file known by name (offline mirror file name, sha256, download address)."""
    return WEIGHTS.register(spec.name, spec)


for _spec in (
    WeightSpec(
        "cifar10jpeg-resnet20",
        "cifar10_resnet20",
        "cifar10jpeg-resnet20.pt",
        "2da14c842824902aca2dfd58cc71b413431160d9804efbfa6fcfcdc1b57f3d96",
        None,
    ),
    WeightSpec(
        "cifar10jpeg-resnet56",
        "cifar10_resnet56",
        "cifar10jpeg-resnet56.pt",
        "0f924ab196d9534c8ebdcff9759ea72bf5123f9703ea06e20a98e898dfc7d8d4",
        None,
    ),
    WeightSpec(
        "akamaster-cifar10-resnet20",
        "cifar10_resnet20",
        "akamaster-cifar10-resnet20-12fca82f.th",
        "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        f"{_AKAMASTER_URL}/resnet20-12fca82f.th",
    ),
    WeightSpec(
        "akamaster-cifar10-resnet56",
        "cifar10_resnet56",
        "akamaster-cifar10-resnet56-4bfd9763.th",
        "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
        f"{_AKAMASTER_URL}/resnet56-4bfd9763.th",
    ),
):
    register_weights(_spec)


@dataclass(frozen=True)
class _Target:
    """One file to locate: a registered spec or a torchvision weights enum, normalised."""

    label: str
    filename: str
    expected_sha256: str  # full digest, or a prefix (torch.hub convention); "" = unchecked
    url: str | None
    extra_dirs: tuple[Path, ...] = ()


def list_weights(arch: str | None = None) -> list[str]:
    """Names of the registered weight files, optionally only those for one architecture."""
    return [n for n in WEIGHTS.names() if arch is None or WEIGHTS.get(n).arch == arch]


def get_weight_spec(name: str) -> WeightSpec | None:
    """The registered spec called ``name``, or None."""
    return WEIGHTS.get(name) if name in WEIGHTS else None


def assets_dir() -> Path | None:
    """The offline mirror root from ``$DFPRACTISE_ASSETS`` (None when unset or empty)."""
    value = os.environ.get(ASSETS_ENV, "")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where downloads go: ``$DFPRACTISE_CACHE`` or ``~/.cache/dfpractise``."""
    value = os.environ.get(CACHE_ENV, "")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "dfpractise"


def weights_sha256(path: str | Path) -> str:
    """Full hex sha256 of a file, so a run manifest can record exactly which weights it used."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_url(filename: str, url: str | None) -> str | None:
    base = os.environ.get(URL_ENV, "")
    return f"{base.rstrip('/')}/{filename}" if base else url


def _spec_target(spec: WeightSpec) -> _Target:
    return _Target(spec.name, spec.filename, spec.sha256, _download_url(spec.filename, spec.url))


def _torchvision_target(ref: str) -> _Target:
    from torchvision.models import get_weight

    try:
        enum = get_weight(ref)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ModelError(
            f"unknown torchvision weights '{ref}' ({exc}); use an enum name such as "
            "ResNet34_Weights.IMAGENET1K_V1"
        ) from None
    filename = enum.url.rsplit("/", 1)[-1]
    match = _HUB_HASH.search(filename)
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    return _Target(
        ref, filename, match.group(1) if match else "", _download_url(filename, enum.url), (hub_dir,)
    )


def _local_candidates(target: _Target) -> list[tuple[Path, bool]]:
    """(path, is_cache) in lookup order: the mirror, then our cache, then any extra read-only dirs."""
    dirs: list[tuple[Path, bool]] = []
    root = assets_dir()
    if root is not None:
        dirs.append((root / "weights", False))
    dirs.append((cache_dir() / "weights", True))
    dirs += [(d, False) for d in target.extra_dirs]
    return [(d / target.filename, is_cache) for d, is_cache in dirs]


def _hash_ok(path: Path, target: _Target) -> bool:
    return weights_sha256(path).startswith(target.expected_sha256)


def _hash_error(target: _Target, path: Path, what: str) -> ModelError:
    return ModelError(
        f"{what} {path} for weights '{target.label}' has sha256 {weights_sha256(path)}, expected "
        f"{target.expected_sha256}; the file is corrupt or not the published one, replace it"
    )


def _find_local(target: _Target) -> Path | None:
    for path, is_cache in _local_candidates(target):
        if not path.is_file():
            continue
        if _hash_ok(path, target):
            return path
        if is_cache:  # a bad cached copy is ours to drop; fetch it again below
            path.unlink(missing_ok=True)
            continue
        raise _hash_error(target, path, "file")
    return None


def _download(target: _Target, url: str) -> Path:
    def fetch(part: Path) -> None:  # checked before it takes the file's name
        try:
            torch.hub.download_url_to_file(url, str(part), hash_prefix=None, progress=sys.stderr.isatty())
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ModelError(
                f"could not download weights '{target.label}' from {url} ({reason}); check the "
                f"network or ${URL_ENV}, or set ${ASSETS_ENV} to a folder holding weights/{target.filename}"
            ) from None
        digest = weights_sha256(part)
        if not digest.startswith(target.expected_sha256):
            raise ModelError(
                f"downloaded weights '{target.label}' from {url} have sha256 {digest}, expected "
                f"{target.expected_sha256}; the download was deleted, check the URL or mirror"
            )

    return atomic_write(cache_dir() / "weights" / target.filename, fetch)


def _not_found(target: _Target) -> ModelError:
    looked = ", ".join(str(p.parent) for p, _ in _local_candidates(target))
    unset = f" (${ASSETS_ENV} is not set)" if assets_dir() is None else ""
    return ModelError(
        f"weights '{target.label}' ({target.filename}) not found in {looked}{unset} and it has no "
        f"public download URL; set ${ASSETS_ENV} to the assets folder holding weights/ "
        "(e.g. ../shared/assets) or pass the file path"
    )


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or os.sep in ref or Path(ref).suffix in _PATH_SUFFIXES


def _unknown_ref(ref: str) -> ModelError:
    known = ", ".join(list_weights())
    if _looks_like_path(ref):
        return ModelError(
            f"weights file '{ref}' does not exist (resolved to {Path(ref).expanduser().absolute()}); "
            f"pass an existing file or a known weights name ({known})"
        )
    return ModelError(
        f"weights '{ref}' is neither a file nor a known weights name (known: {known}, or a "
        "torchvision enum name such as ResNet34_Weights.IMAGENET1K_V1)"
    )


def resolve_weights(ref: str) -> Path:
    """Turn a weights reference (file path, registered name, torchvision enum name) into a local file.

    Order: an existing file; the local mirror ``$DFPRACTISE_ASSETS/weights``; the cache
    ``$DFPRACTISE_CACHE/weights``; a verified download into the cache.
    """
    ref = str(ref)
    as_path = Path(ref).expanduser()
    if as_path.is_file():
        return as_path
    if ref in WEIGHTS:
        target = _spec_target(WEIGHTS.get(ref))
    elif "_Weights." in ref:
        target = _torchvision_target(ref)
    else:
        raise _unknown_ref(ref)
    found = _find_local(target)
    if found is not None:
        return found
    if target.url is None:
        raise _not_found(target)
    return _download(target, target.url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:200]}" if line else type(exc).__name__


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ModelError(f"weights file {path} holds no state dict of tensors (found {keys})")
    prefix = "module."

    def strip(key: str) -> str:
        return key[len(prefix):] if key.startswith(prefix) else key

    state = OrderedDict((strip(k), v) for k, v in obj.items())
    metadata = getattr(obj, "_metadata", None)
    if metadata is not None:  # module versions, which some modules need to load
        state._metadata = OrderedDict((strip(k), v) for k, v in metadata.items())  # type: ignore[attr-defined]
    return state


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch checkpoint on CPU and return a plain state dict.

    Unwraps ``state_dict``/``model`` wrappers and DataParallel ``module.`` prefixes, since
    published CIFAR checkpoints use both.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            obj: object = read_safetensors(path)
        else:
            # map_location matters: some published checkpoints were saved from CUDA tensors.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a checkpoint, or pickles arbitrary objects
        raise ModelError(f"cannot load weights file {path}: {_load_failure(exc)}") from None
    return _as_state_dict(obj, path)


def _load_failure(exc: BaseException) -> str:
    """Why a checkpoint did not load, in one line; never torch's advice to switch safety off alone.

    torch's weights-only refusal says how to load the file anyway (``weights_only=False``) in a
    paragraph whose warning, that this runs any code the file holds, is easy to lose when cut to
    one line. The line here keeps the refusal and the warning together.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds pickled Python objects{what} beyond tensors, which loading would have to execute; "
                "it was refused and nothing in it was run. Only if you trust where it came from, load it "
                "yourself (torch.load(..., weights_only=False)) and re-save its state_dict, e.g. with "
                "safetensors.torch.save_file")
    if isinstance(exc, (pickle.UnpicklingError, KeyError, EOFError, UnicodeDecodeError)) or "StreamReader" in text:
        detail = _first_line(exc).split(". ")[0]  # torch's zip errors go on for several sentences
        return f"not a PyTorch checkpoint or safetensors file, or a truncated one ({detail})"
    return _first_line(exc)


def _arch_name(model: nn.Module) -> str:
    cfg = getattr(model, "model_spec", None)
    return getattr(cfg, "name", None) or type(model).__name__


def _listed(keys: list[str], limit: int = 5) -> str:
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable reasons why ``sd`` does not load strictly into ``model``; empty if it does."""
    own = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (older torchvision files lack it).
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} file {list(sd[k].shape)} vs model {list(own[k].shape)}"
        for k in sd
        if k in own and sd[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({_listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches ({_listed(shapes)})")
    return parts


MODULE_METADATA = "torch_module_metadata"
"""The safetensors metadata key under which this project keeps a state dict's module versions."""


def save_safetensors(model: nn.Module, path: str | Path) -> None:
    """The model's state dict as safetensors, atomically, with its module versions (torch keeps
    them on the state dict; some modules, torchvision's MNASNet, refuse to load without them)."""
    import json

    from safetensors.torch import save_file

    state = model.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {MODULE_METADATA: json.dumps(getattr(state, "_metadata", {}) or {})}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict, with the module versions ``save_safetensors`` kept."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        state = OrderedDict((k, handle.get_tensor(k)) for k in handle.keys())
        stored = (handle.metadata() or {}).get(MODULE_METADATA)
    if stored:
        state._metadata = OrderedDict(json.loads(stored))  # type: ignore[attr-defined]
    return state


def load_weights(model: nn.Module, ref: str) -> Path:
    """Resolve ``ref`` and load it strictly into ``model``; return the file used.

    Strict on purpose: a partially loaded teacher would look fine and quietly ruin the result.
    """
    path = resolve_weights(ref)
    sd = load_state_dict_file(path)
    arch = _arch_name(model)
    problems = _mismatch(model, sd)
    if problems:
        spec = get_weight_spec(str(ref))
        hint = (
            f"; '{ref}' is for {spec.arch}"
            if spec is not None and spec.arch != arch
            else "; check the model name and num_classes"
        )
        raise ModelError(
            f"weights '{ref}' ({path.name}) do not fit {arch}: {'; '.join(problems)}{hint}"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights '{ref}' ({path.name}) do not fit {arch}: {_first_line(exc)}") from None
    return path
