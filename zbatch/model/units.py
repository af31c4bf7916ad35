"""Durations and memory sizes as recipes and profiles write them.

Both come from messages, so both are read from ASCII digits only ("²" and "٣" are digits to
`str.isdigit` and `\\d`, not to a scheduler) and bounded: a duration is at most MAX_DURATION_S
(ten years) and a size at most MAX_MEMORY_MB (2**40 MB), so no arithmetic on them overflows.
"""

from __future__ import annotations

import re

from zbatch.errors import ParameterError

MAX_DURATION_S = 10 * 366 * 24 * 3600
MAX_MEMORY_MB = 2**40

_CLOCK = re.compile(r"(?:([0-9]{1,5})-)?(?:([0-9]{1,8}):)?([0-9]{1,2}):([0-9]{1,2})", re.ASCII)
_MEMORY = re.compile(r"([0-9]{1,16})[ \t]*([KMGT]?)B?", re.ASCII | re.IGNORECASE)
_MEMORY_FACTOR = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_duration(value: object, what: str = "time limit") -> int:
    """Seconds from an int, "H:MM:SS", "MM:SS" or "D-HH:MM:SS" (up to ten years)."""
    seconds = _whole(value)
    if isinstance(value, str) and (match := _CLOCK.fullmatch(value.strip(" "))):
        days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
        if minutes < 60 and secs < 60:
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds is not None and 0 <= seconds <= MAX_DURATION_S:
        return seconds
    raise ParameterError(
        f"{what} {_shown(value)} is not a duration: use seconds or H:MM:SS (for example "
        f"6:00:00), at most {MAX_DURATION_S} seconds"
    )


def format_clock(seconds: int) -> str:
    """H:MM:SS, which both sbatch --time and qsub -l h_rt accept."""
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def parse_memory_mb(value: object, what: str = "memory") -> int:
    """Megabytes from an int (MB, as dlstbx recipes give it) or "4G", "512M" (up to 2**40 MB)."""
    megabytes = _whole(value)
    if isinstance(value, str):
        match = _MEMORY.fullmatch(value.strip(" "))
        if match and int(match.group(1)) > 0:
            factor = _MEMORY_FACTOR[match.group(2).upper()]
            megabytes = max(1, int(int(match.group(1)) * factor))
    if megabytes is not None and 0 < megabytes <= MAX_MEMORY_MB:
        return megabytes
    raise ParameterError(
        f"{what} {_shown(value)} is not a size: use megabytes or a unit (4G, 512M), "
        f"at most {MAX_MEMORY_MB} MB"
    )
