"""The one rule for names that become paths or Triton model names (model, export, zoo, repo).

A name from outside (a Magenta JSON's `info.name`, a zoo name, a CLI argument) is never joined
to a path or used as a Triton model name until it passes `check_name`; a zoo name with a set
prefix (`magenta/owl.gen`) becomes one with `safe_name`."""

from __future__ import annotations

import re

from sketchkit.errors import SketchkitError

MAX_NAME_LEN = 64
NAME_RULE = (
    f"1-{MAX_NAME_LEN} characters of letters, digits, '_', '.' and '-', "
    "starting with a letter or digit"
)
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_LEN - 1}}}")


class NameError_(SketchkitError):
    """A name that would escape a directory or that Triton would refuse."""


def is_valid_name(name: str) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def check_name(name: str, what: str = "model name") -> str:
    """`name` itself if it follows `NAME_RULE`, else a one-line error naming the rule."""
    if not is_valid_name(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:77]}..."
        raise NameError_(f"bad {what} {shown!r}: a name is {NAME_RULE} (and no '..')")
    return name


def safe_name(typed: str) -> str:
    """A typed zoo name as a valid name: `magenta/owl.gen` -> `magenta-owl.gen`; checked."""
    return check_name(typed.strip().replace("/", "-"))
