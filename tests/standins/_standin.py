"""Shared by the stand-in tools: phil-style arguments, failure and sleep switches.

The stand-ins take the real tools' command lines (`key=value` phil assignments), refuse what
the real tools refuse, and write the real output layout with content derived from the inputs.

Environment switches, read by every stand-in:
    STANDIN_FAIL=1       fail as the real tool does: its error file, a message, exit code 1
    STANDIN_FAIL_EXIT=N  the exit code of such a failure (0: the error file is the only sign)
    STANDIN_SLEEP=N      spend N seconds "processing" first (signal and heartbeat tests)
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

PHIL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
TRUE = ("true", "yes", "1")
FALSE = ("false", "no", "0")


class Sorry(Exception):
    """A user error, which the cctbx-based tools report as 'Sorry: ...'."""


def parse_assignments(args: list[str], known: Callable[[str], bool]) -> list[tuple[str, str]]:
    """`key=value` arguments in order; anything else is refused as phil refuses it."""
    pairs = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not PHIL_NAME.fullmatch(key):
            raise Sorry(f"Unrecognised argument: {arg!r} (expected name=value)")
        if not known(key):
            raise Sorry(f"Unknown command line parameter definition: {key} = {value}")
        bad = any(c in value for c in ";{}\"'$\\") or value.startswith("#")
        if not value or value != value.strip() or bad:
            raise Sorry(f"Invalid value for {key}: {value!r}")
        pairs.append((key, value))
    return pairs


def as_int(key: str, value: str, minimum: int = 0) -> int:
    if not value.isdigit() or int(value) < minimum:
        raise Sorry(f"{key}={value}: a whole number >= {minimum} is required")
    return int(value)


def as_float(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise Sorry(f"{key}={value}: a number is required") from None


def as_bool(key: str, value: str) -> bool:
    if value.lower() not in TRUE + FALSE:
        raise Sorry(f"{key}={value}: True or False is required")
    return value.lower() in TRUE


def as_floats(key: str, value: str, count: int | None = None) -> list[float]:
    numbers = [as_float(key, v) for v in value.split(",")]
    if count is not None and len(numbers) != count:
        raise Sorry(f"{key}={value}: {count} numbers are required")
    return numbers


def pause() -> None:
    seconds = os.environ.get("STANDIN_SLEEP", "")
    if seconds:
        time.sleep(float(seconds))


def failure_requested() -> bool:
    return os.environ.get("STANDIN_FAIL", "") not in ("", "0")


def failure_exit_code() -> int:
    return int(os.environ.get("STANDIN_FAIL_EXIT", "1"))


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fake_mtz(title: str, cell: list[float], space_group: str, d_min: float) -> bytes:
    """MTZ magic number and the text header records (CELL, SYMINF, RESO) other tools read."""
    records = [
        "VERS MTZ:V1.1",
        f"TITL {title}",
        "CELL " + " ".join(f"{v:9.4f}" for v in cell),
        f"SYMINF   8  4  {space_group[:1]}     0 '{space_group}' PG",
        f"RESO {1 / 48.0**2:.6f} {1 / d_min**2:.6f}",
        "COLUMN IMEAN J",
        "COLUMN I(+) K",
        "COLUMN I(-) K",
        "END",
        "MTZENDOFHEADERS",
    ]
    return b"MTZ \x00\x00\x00\x00" + "".join(r.ljust(80) for r in records).encode()


def read_fake_mtz(path: Path) -> tuple[list[float], str]:
    """Cell and space group from a fake MTZ; refuses files that are not MTZ at all."""
    raw = path.read_bytes()
    if not raw.startswith(b"MTZ "):
        raise Sorry(f"{path} is not an MTZ file")
    text = raw[8:].decode("ascii", errors="replace")
    records = [text[i : i + 80].strip() for i in range(0, len(text), 80)]
    cell = next((r.split()[1:] for r in records if r.startswith("CELL ")), None)
    symm = next((r for r in records if r.startswith("SYMINF ")), None)
    if cell is None or symm is None:
        raise Sorry(f"{path}: no CELL or SYMINF record in the MTZ header")
    return [float(v) for v in cell], symm.split("'")[1].replace(" ", "")
