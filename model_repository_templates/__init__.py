"""Presets for Triton model configs, kept as text so people can read and copy them.

Each ``*.pbtxt`` here is a valid ``ModelConfig`` fragment; the repository builder merges one
backend preset and any tuning presets into a config it then completes in code. Users may add
their own folder of fragments: a name found there wins over the built-in one, and the builder
checks merged fields against an allow-list (DESIGN §5), so a fragment can tune, not inject.

This package only finds and reads text; it imports nothing from Triton.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from manager.errors import InvalidInput

BUILTIN_DIR = Path(__file__).resolve().parent
SUFFIX = ".pbtxt"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

__all__ = [
    "BUILTIN_DIR",
    "TemplateNotFound",
    "list_presets",
    "list_templates",
    "load_template",
    "template_path",
]

TemplateDirs = Sequence[Path | str] | Path | str | None


class TemplateNotFound(InvalidInput):
    """A config names a preset that exists neither in the user folders nor built in."""


def _stem(name: str) -> str:
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if not _NAME_RE.fullmatch(stem):
        raise InvalidInput(
            f"invalid template name {name!r}",
            hint="template names use lower-case letters, digits, '_' or '-'",
        )
    return stem


def _search_dirs(extra_dirs: TemplateDirs) -> list[Path]:
    if extra_dirs is None:
        extras: list[Path] = []
    elif isinstance(extra_dirs, (str, Path)):
        extras = [Path(extra_dirs)]
    else:
        extras = [Path(d) for d in extra_dirs]
    return [*extras, BUILTIN_DIR]


def template_path(name: str, *, extra_dirs: TemplateDirs = None) -> Path:
    """Where template ``name`` (with or without ``.pbtxt``) lives; user folders first."""
    stem = _stem(name)
    for folder in _search_dirs(extra_dirs):
        candidate = folder / f"{stem}{SUFFIX}"
        if candidate.is_file():
            return candidate
    known = ", ".join(list_templates(extra_dirs=extra_dirs)) or "none"
    raise TemplateNotFound(f"no model config template {stem!r}", hint=f"known templates: {known}")


def load_template(name: str, *, extra_dirs: TemplateDirs = None) -> str:
    """The text of template ``name``; parse it with the real schema before trusting it."""
    return template_path(name, extra_dirs=extra_dirs).read_text(encoding="utf-8")


def list_templates(*, extra_dirs: TemplateDirs = None) -> list[str]:
    names: set[str] = set()
    for folder in _search_dirs(extra_dirs):
        if folder.is_dir():
            names.update(
                p.name[: -len(SUFFIX)]
                for p in folder.glob(f"*{SUFFIX}")
                if _NAME_RE.fullmatch(p.name[: -len(SUFFIX)])
            )
    return sorted(names)


def list_presets(extra_dirs: TemplateDirs = None) -> list[dict[str, str]]:
    """Each preset with its first comment line (what it is for) and where it comes from."""
    result = []
    for name in list_templates(extra_dirs=extra_dirs):
        path = template_path(name, extra_dirs=extra_dirs)
        lines = path.read_text().splitlines()
        about = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), "")
        origin = "built-in" if path.parent == BUILTIN_DIR else str(path.parent)
        result.append({"name": name, "about": about, "origin": origin})
    return result
