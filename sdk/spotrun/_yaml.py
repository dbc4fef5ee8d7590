"""Writes documents as readable YAML without a YAML library: `spotrun submit --dry-run`, and the local
cluster's kwok Stages and audit policy."""

from __future__ import annotations

import json
import re
from typing import Any

Obj = dict[str, Any]


def dump_all(documents: list[Obj]) -> str:
    """A YAML stream of DOCUMENTS, multi-line strings as literal blocks (the templates stay readable)."""
    return "".join("---\n" + _yaml(document, 0) for document in documents)


# Strings YAML reads back as the same string when written plain; the rest are quoted.
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return _quoted(text)


def _quoted(text: str) -> str:
    """TEXT as a YAML double-quoted scalar: JSON's escapes, but a character beyond the Basic
    Multilingual Plane as \\UXXXXXXXX (YAML, and kubectl, refuse JSON's surrogate pairs)."""
    return _SURROGATES.sub(
        lambda m: f"\\U{0x10000 + ((int(m[1], 16) - 0xD800) << 10) + int(m[2], 16) - 0xDC00:08x}", json.dumps(text)
    )


_SURROGATES = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _block(value: str, indent: int) -> str | None:
    """VALUE as a `|` literal block, where YAML can keep it exactly; else None."""
    lines = value.split("\n")
    if "\n" not in value or value.startswith((" ", "\n")) or any(line != line.rstrip() for line in lines):
        return None
    if not all(line.isprintable() for line in lines):  # controls, DEL, U+2028: a block cannot hold them
        return None
    chomp = "" if value.endswith("\n") and not value.endswith("\n\n") else "-" if not value.endswith("\n") else "+"
    body = lines[:-1] if value.endswith("\n") else lines
    pad = " " * indent
    return f"|{chomp}\n" + "".join(f"{pad}{line}\n" if line else "\n" for line in body)


def _yaml(value: Any, indent: int) -> str:
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}\n"
        out = []
        for key, item in value.items():
            out.append(f"{pad}{_scalar(key)}:{_after_key(item, indent)}")
        return "".join(out)
    if isinstance(value, list):
        if not value:
            return "[]\n"
        out = []
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = _yaml(item, indent + 2).split("\n", 1)
                out.append(f"{pad}- {first.lstrip()}\n{rest[0] if rest else ''}")
            else:
                out.append(f"{pad}-{_after_key(item, indent)}")
        return "".join(out)
    return _scalar(value) + "\n"


def _after_key(item: Any, indent: int) -> str:
    """What follows `key:` or `-`: a scalar on the line, or a nested block below it."""
    if isinstance(item, dict | list) and item:
        return "\n" + _yaml(item, indent + 2)
    if isinstance(item, str) and (block := _block(item, indent + 2)) is not None:
        return " " + block
    return " " + _yaml(item, indent)
