"""Durations as users type them (--grace, --expires) and as tables print them.

Apart from `classes.py` so the command line parses them without loading the erasure code.
"""

import re

from peercloud.errors import UsageError

DEFAULT_GRACE = 600.0  # seconds a holder may be offline before its blocks are re-created elsewhere
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h', '2d' for --grace and --expires: a unit always (is '5' seconds or days?)."""
    match = _DURATION.match(text)
    if not match:
        hint = " (give a unit)" if text.strip().replace(".", "", 1).isdigit() else ""
        raise UsageError(f"not a duration: {text!r}{hint}: use e.g. 30s, 10m, 2h, 7d")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact rendering of a duration among s, m, h, d."""
    for unit in ("d", "h", "m"):
        if seconds >= _SECONDS[unit] and seconds % _SECONDS[unit] == 0:
            return f"{seconds / _SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s"
