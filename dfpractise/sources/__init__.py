"""Tiny-set sources: one interface (``ImageSource``), one registry, many ways to get images.

Import from here: ``create_source("real", root=...)``, ``list_sources()``, ``register_source``.
The registry itself lives in ``base`` so that source modules can register without importing
this package's ``__init__`` (no import cycle); importing this package registers the built-ins.
"""

from .base import (
    SOURCES,
    ImageSource,
    SourceContext,
    TinySet,
    create_source,
    list_sources,
    read_file_list,
    register_source,
    source_from_config,
)
from .ood import OutOfDomainFolderSource
from .real import RealFolderSource
from .synthetic import DiffusionSource, GeneratorSource, SyntheticSource

__all__ = [
    "SOURCES",
    "DiffusionSource",
    "GeneratorSource",
    "ImageSource",
    "OutOfDomainFolderSource",
    "RealFolderSource",
    "SourceContext",
    "SyntheticSource",
    "TinySet",
    "create_source",
    "list_sources",
    "read_file_list",
    "register_source",
    "source_from_config",
]
