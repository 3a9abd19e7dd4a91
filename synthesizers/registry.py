"""Named plug-ins of one kind, looked up and built by name from recipe settings.

One class serves every kind in both packages (synthesizers here; image sources, block scorers,
residual-block rules, recovery methods and selection methods in ``dfpractise``), so they all
refuse a taken name, answer an unknown name with the known ones, and reject a setting a plug-in
does not take, in the same one-line way. Each registry is given the error classes its package
raises. It lives in this package because ``dfpractise`` builds on ``synthesizers`` and never the
reverse.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Callable, Generic, Iterator, TypeVar, overload

T = TypeVar("T")
P = TypeVar("P")


class Registry(Generic[T]):
    """Plug-ins (classes, functions or plain objects) registered under names.

    ``unknown`` is raised for a name not found (with close names suggested and ``hint`` after
    the known ones), ``invalid`` for settings a plug-in cannot take.
    """

    def __init__(self, kind: str, plural: str, *, unknown: type[Exception], invalid: type[Exception],
                 hint: str = ""):
        self.kind = kind
        self.plural = plural
        self.unknown = unknown
        self.invalid = invalid
        self.hint = hint
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[P], P]: ...
    @overload
    def register(self, name: str, entry: P) -> P: ...

    def register(self, name: str, entry: Any = None) -> Any:
        """Make ``entry`` available under ``name``: ``@registry.register("x")`` or a direct call.

        A name taken by another entry is refused (a plug-in never silently replaces one);
        registering the same entry again is harmless. A registered class learns its ``name``.
        """

        def add(item: P) -> P:
            known = self._entries.get(name)
            if known is not None and known is not item:
                owner = getattr(known, "__qualname__", repr(known))
                raise ValueError(f"{self.kind} name {name!r} is already taken by {owner}")
            if isinstance(item, type):
                item.name = name  # type: ignore[attr-defined]
            self._entries[name] = item  # type: ignore[assignment]
            return item

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (plug-ins registered for a test or a notebook session)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """Registered names in the order people read them (resnet20 before resnet110)."""
        return sorted(self._entries, key=_natural_key)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        """The entries, in registration order."""
        return iter(list(self._entries.values()))

    def get(self, name: str) -> T:
        entry = self._entries.get(name)
        if entry is None:
            known = self.names()
            close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
            suggestion = f" did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise self.unknown(f"unknown {self.kind} {name!r};{suggestion} known {self.plural}: "
                               f"{', '.join(known) or 'none'}{self.hint}")
        return entry

    def check(self, name: str) -> str:
        """``name`` if it is registered, else the ``unknown`` error (for settings that name one)."""
        self.get(name)
        return name

    def create(self, name: str, internal: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """An instance of the class registered as ``name``, built from keyword settings.

        A setting it does not take is an ``invalid`` error listing those it does; ``internal``
        names constructor arguments the caller supplies (a teacher model...), left out of that list.
        """
        cls = self.get(name)
        signature = inspect.signature(cls)  # type: ignore[arg-type]
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            accepted = ", ".join(p for p in signature.parameters if p not in internal) or "no settings"
            raise self.invalid(f"{self.kind} {name!r}: {exc}; it accepts {accepted}") from None
        return cls(**kwargs)  # type: ignore[operator]


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
