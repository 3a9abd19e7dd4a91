"""The mechanisms both packages share: the plug-in registry, atomic writes, and the boundary
between ``synthesizers`` (stands alone) and ``dfpractise`` (builds on it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from synthesizers.files import atomic_write, write_text_atomic
from synthesizers.registry import Registry


class Unknown(Exception):
    pass


class Invalid(Exception):
    pass


def _registry() -> Registry:
    return Registry("widget", "widgets", unknown=Unknown, invalid=Invalid, hint=" (see `widgets`)")


def test_registry_refuses_a_taken_name_but_not_the_same_entry_twice():
    widgets = _registry()

    @widgets.register("round")
    class Round:
        def __init__(self, size: int = 1):
            self.size = size

    assert Round.name == "round" and widgets.get("round") is Round
    widgets.register("round", Round)  # the same entry again: harmless
    with pytest.raises(ValueError, match="'round' is already taken by .*Round"):
        widgets.register("round", lambda: None)
    assert widgets.create("round", size=3).size == 3
    with pytest.raises(Invalid, match="widget 'round': .*'colour'.*it accepts size"):
        widgets.create("round", colour="red")


def test_registry_holds_functions_and_objects_and_suggests_close_names():
    widgets = _registry()
    widgets.register("resnet110", object())
    widgets.register("resnet20", len)
    assert widgets.names() == ["resnet20", "resnet110"]  # natural order
    assert "resnet20" in widgets and "resnet21" not in widgets
    with pytest.raises(Unknown, match=r"unknown widget 'resnet21'; did you mean 'resnet20'.*known widgets: "
                                      r"resnet20, resnet110 \(see `widgets`\)"):
        widgets.get("resnet21")
    with pytest.raises(Unknown, match=r"unknown widget 'zzz'; known widgets"):
        widgets.check("zzz")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.txt", "old")
    assert path.read_text() == "old"

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"], "no temporary file is left behind"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new"


def test_atomic_write_gives_a_plain_files_permissions(tmp_path):
    previous = os.umask(0o027)
    try:
        path = write_text_atomic(tmp_path / "report.json", "{}")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640


def test_synthesizers_stands_alone():
    """``import synthesizers`` loads nothing of dfpractise, nor the CLI, config or UI libraries."""
    code = (
        "import sys, synthesizers, synthesizers.cache, synthesizers.generate, synthesizers.quality\n"
        "heavy = ('dfpractise', 'rich', 'click', 'yaml', 'safetensors', 'scipy', 'pydantic')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_synthesizer_errors_become_dfpractise_errors_with_the_same_message():
    from dfpractise import errors as ours
    from synthesizers import errors as theirs

    for raised, expected in [(theirs.ConfigError, ours.ConfigError), (theirs.DataError, ours.DataError),
                             (theirs.SynthesisError, ours.SynthesisError)]:
        with pytest.raises(expected, match="^it went wrong$"):
            with ours.synthesizer_errors():
                raise raised("it went wrong")
    with pytest.raises(KeyError):  # not a user error: passes through untouched
        with ours.synthesizer_errors():
            raise KeyError("bug")
