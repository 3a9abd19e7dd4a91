"""Recipes: YAML files holding a ``RunConfig``, loaded, layered and saved.

A run's settings come from three layers, lowest first: the ``RunConfig`` defaults, a recipe file,
and options given on the command line. A recipe may build on another with ``base: other.yaml``.
String values may name environment variables (``${DFPRACTISE_ASSETS}``) so that one recipe works
on every machine; an unset variable is an error, never a silently empty path. The run folder keeps
the resolved recipe (``save_recipe``) so the run can be rebuilt from it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .config import RunConfig
from .errors import ConfigError
from synthesizers.files import write_text_atomic

class RecipeLoader(yaml.SafeLoader):
    """YAML as recipes and ``KEY=VALUE`` options read it: safe, and ``1e-3`` is a number.

    PyYAML follows YAML 1.1, whose floats need a dot (``1e-3`` and ``2.5e3`` are strings there);
    YAML 1.2, JSON and Python read them as numbers, and so do recipes and the command line.
    """


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """``text`` parsed with ``RecipeLoader``."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a SafeLoader)


# What os.path.expandvars on POSIX treats as a variable reference: $NAME or ${NAME}.
_VAR = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)

# The two ways to state a target; a higher layer that sets one clears the other below it.
_EXCLUSIVE = ("latency_reduction", "drop")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe (and the chain of ``base`` recipes below it) into one nested dict.

    Returns only what the files say, variables expanded; defaults are added by
    ``resolve_config``.
    """
    return _load(Path(path), chain=())


SOURCE_SETTINGS = ("path", "class_balanced", "synthesis", "cache_dir", "rebuild_cache", "auto_synthesis")
"""``data`` settings that belong to one source, reset when an override switches source."""


def resolve_config(recipe: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Build the validated config of a run: defaults <- recipe <- overrides.

    ``overrides`` is a nested dict in the shape of ``RunConfig.to_dict()``, as the CLI collects it;
    ``None`` values mean "option not given". Setting ``drop`` clears the recipe's
    ``latency_reduction`` and vice versa, so a CLI option beats the recipe instead of conflicting.
    Likewise a different ``data.source`` drops the recipe's settings of its own source (folder,
    synthesis options, cache), which would mean nothing to the new one.
    """
    data = RunConfig().to_dict()
    if recipe is not None:
        data = overlay(data, load_recipe(recipe), keep_none=True)
        try:
            RunConfig.from_dict(data)
        except ConfigError as err:  # name the file that holds the bad key or value
            raise ConfigError(f"recipe {recipe}: {err}") from None
        new_source = ((overrides or {}).get("data") or {}).get("source")
        if new_source is not None and new_source != data["data"]["source"]:
            defaults = RunConfig().data
            for key in SOURCE_SETTINGS:
                data["data"][key] = getattr(defaults, key)
    data = overlay(data, overrides or {}, keep_none=False)
    return RunConfig.from_dict(data).validate()


def save_recipe(config: RunConfig, path: str | Path) -> Path:
    """Write ``config`` as a recipe that ``resolve_config`` turns back into an equal config."""
    path = Path(path)
    header = (
        f"# Resolved recipe written by dfpractise {__version__}: every setting of the run, defaults\n"
        f"# included, variables expanded. Rebuild the run with:\n"
        f"#   dfpractise run --recipe {path} --out NEW_RUN_DIR\n"
    )
    body = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    write_text_atomic(path, header + body)
    return path


def _load(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """Load one file, expand its variables, then lay it over its ``base`` (if any)."""
    key = path.resolve()
    if key in chain:
        loop = " -> ".join(p.name for p in chain + (key,))
        raise ConfigError(f"recipe {path}: its 'base' chain loops ({loop})")
    data = _read_mapping(path)
    data = _expand(data, path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"recipe {path}: 'base' must be a file name, got {base!r}")
    parent = _load(path.parent / base, chain + (key,))
    return overlay(parent, data, keep_none=True)


def _read_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping; every failure is one line naming the file (and line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"recipe {path} cannot be read: {err.strerror or err}") from None
    try:
        data = read_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"recipe {path}{where}: invalid YAML: {problem}") from None
    if data is None:  # an empty file: all defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of settings, got {type(data).__name__}")
    return data


def _expand(value: Any, path: Path) -> Any:
    """Expand environment variables in every string, refusing unset ones."""
    if isinstance(value, dict):
        return {k: _expand(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, path) for v in value]
    if not isinstance(value, str):
        return value
    for match in _VAR.finditer(value):
        name = match.group(1).strip("{}")
        if not os.environ.get(name):
            hint = (
                " (the Makefile sets DFPRACTISE_ASSETS to ../shared/assets)"
                if name == "DFPRACTISE_ASSETS"
                else ""
            )
            raise ConfigError(f"recipe {path} uses ${{{name}}}, which is not set{hint}")
    return os.path.expandvars(value)


def overlay(lower: dict[str, Any], upper: dict[str, Any], keep_none: bool) -> dict[str, Any]:
    """Deep-merge ``upper`` over a copy of ``lower``, one target form clearing the other.

    In a recipe an explicit ``null`` is a value (``drop: null`` clears a base's drop,
    ``keep_none=True``); among CLI overrides ``None`` means "not given" and is skipped.
    """
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in lower.items()}
    for name, other in zip(_EXCLUSIVE, reversed(_EXCLUSIVE)):
        if upper.get(name) is not None:
            merged[other] = None
    for key, value in upper.items():
        if value is None and not keep_none:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value, keep_none)
        else:
            merged[key] = value
    return merged
