"""argparse `type=` checks shared by the `spotrun` and `localcluster` commands: a bad value is a
usage error (exit 2) naming the option and what to write, before anything runs. And the check of a
path the user gave for a directory: whether a file stands in its way."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}: give {minimum} or more")
        return value

    parse.__name__ = "whole number"
    return parse


def seconds(text: str) -> float:
    """A finite number of seconds above 0."""
    return _seconds(text, zero=False)


def seconds_from_zero(text: str) -> float:
    """A finite number of seconds, 0 or more."""
    return _seconds(text, zero=True)


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ", 0 or more" if zero else " above 0"
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds{bound}")
    return value


def file_in_the_way(path: Path) -> Path | None:
    """The file standing where directory `path` should be: the first of `path` and the directories
    above it that exists, when it is not a directory; None when it is one (or nothing exists)."""
    for at in (path, *path.absolute().parents):
        if at.exists():
            return None if at.is_dir() else at
    return None


def object_name(text: str) -> str:
    """A Kubernetes object name (DNS-1123 subdomain)."""
    if len(text) > 253 or not DNS_SUBDOMAIN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Kubernetes name: at most 253 characters of a-z, 0-9, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return text
