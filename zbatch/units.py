"""Durations and memory sizes as recipes and profiles write them."""

from __future__ import annotations

import re

from zbatch.errors import ParameterError

_CLOCK = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")
_MEMORY = re.compile(r"^(\d+)\s*([KMGT]?)B?$", re.IGNORECASE)
_MEMORY_FACTOR = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_duration(value: object, what: str = "time limit") -> int:
    """Seconds from an int, "H:MM:SS", "MM:SS" or "D-HH:MM:SS"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _CLOCK.match(value.strip())
        if match:
            days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
            if minutes < 60 and seconds < 60:
                return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    raise ParameterError(
        f"{what} {value!r} is not a duration: use seconds or H:MM:SS (for example 6:00:00)"
    )


def format_clock(seconds: int) -> str:
    """H:MM:SS, which both sbatch --time and qsub -l h_rt accept."""
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def parse_memory_mb(value: object, what: str = "memory") -> int:
    """Megabytes from an int (MB, as dlstbx recipes give it) or "4G", "512M"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = _MEMORY.match(value.strip())
        if match and int(match.group(1)) > 0:
            return max(1, int(int(match.group(1)) * _MEMORY_FACTOR[match.group(2).upper()]))
    raise ParameterError(f"{what} {value!r} is not a size: use megabytes or a unit (4G, 512M)")
