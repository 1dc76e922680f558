"""Names that become paths: client names and run ids are checked where they enter, and every path built
from one is checked to stay inside its parent (a name must never reach outside the run directory)."""

from __future__ import annotations

import re
from pathlib import Path

SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
RULE = "1-64 characters, each a letter, digit, '_' or '-'"


def check_name(name: object, what: str = "name") -> str:
    """``name`` itself when it is safe as a file name on every OS, else ValueError naming ``what``."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a safe name ({RULE})")
    return name


def child(parent: Path, name: str, what: str = "name") -> Path:
    """``parent / name`` for a safe ``name``, checked to resolve inside ``parent`` (no links out)."""
    path = Path(parent) / check_name(name, what)
    if not path.resolve().is_relative_to(Path(parent).resolve()):
        raise ValueError(f"{what} {name!r} leads outside {parent}")
    return path


def repeated_ignoring_case(names: list[str]) -> list[str]:
    """Names that occur more than once when case is ignored (``Geo`` and ``geo`` share a folder on macOS)."""
    seen: dict[str, str] = {}
    repeated = []
    for name in names:
        key = name.casefold()
        if key in seen:
            repeated.append(name)
        seen.setdefault(key, name)
    return sorted(set(repeated))
