"""Named plug-ins of one kind (image sources, synthesizers), built by name from recipe settings.

Recipes and the CLI name a plug-in and give its settings as keywords; a user adds one with a class
decorator. One class serves every kind so they all answer an unknown name or a wrong setting with
the same kind of one-line error.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError, DFPractiseError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    """Classes registered under names; ``unknown`` is the error raised for a name not found."""

    def __init__(self, kind: str, plural: str, unknown: type[DFPractiseError] = ConfigError):
        self.kind = kind
        self.plural = plural
        self.unknown = unknown
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: make the class available under ``name`` (and set its ``name``)."""

        def decorate(cls: C) -> C:
            known = self._classes.get(name)
            if known is not None and known is not cls:
                raise ValueError(f"{self.kind} name {name!r} is already taken by {known.__qualname__}")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        """Forget ``name`` (plug-ins registered for a test or a notebook session)."""
        self._classes.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        cls = self._classes.get(name)
        if cls is None:
            raise self.unknown(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}")
        return cls

    def create(self, name: str, internal: tuple[str, ...] = (), **kwargs: Any) -> T:
        """An instance built from keyword settings; a setting it does not take is a ConfigError.

        ``internal`` names constructor arguments the caller supplies (a teacher model...), left out
        of the list of settings the error offers the user.
        """
        cls = self.get(name)
        signature = inspect.signature(cls)
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            accepted = ", ".join(p for p in signature.parameters if p not in internal) or "no settings"
            raise ConfigError(f"{self.kind} {name!r}: {exc}; it accepts {accepted}") from None
        return cls(**kwargs)
