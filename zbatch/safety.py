"""Strict patterns for every value that reaches a job script without shell quoting.

Scheduler directives (`#SBATCH`, `#$`) are not parsed by a shell, so quoting cannot protect
them; their values must instead match a pattern that admits no whitespace, quote or shell
metacharacter. Everything that reaches the script body goes through `shlex.quote` as well.
"""

from __future__ import annotations

import posixpath
import re

from zbatch.errors import ParameterError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# No ":" (qsub reads "-o a:b" as host:path) and nothing a shell or directive would parse.
PATH = re.compile(r"^/[A-Za-z0-9_./+@%,=~-]{0,4000}$")
CONSTRAINT = re.compile(r"^[A-Za-z0-9_.&|!*()\[\],:-]{1,512}$")
ARRAY = re.compile(r"^[0-9][0-9,:%-]{0,127}$")
RAW_ARG = re.compile(r"^[A-Za-z0-9_.,:=/@+-]{1,256}$")
MAX_TEXT = 1024 * 1024


def check(pattern: re.Pattern[str], value: object, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
        raise ParameterError(f"{what} {shown} is not allowed: it must match {pattern.pattern}")
    return value


def check_path(value: object, what: str) -> str:
    """An absolute, normalised path without `..` and without shell or directive syntax."""
    if not isinstance(value, str):
        raise ParameterError(f"{what} must be a string path, not {type(value).__name__}")
    if not value.startswith("/"):
        raise ParameterError(f"{what} {value!r} must be an absolute path")
    if ".." in value.split("/"):
        raise ParameterError(f"{what} {value!r} must not contain '..'")
    check(PATH, value, what)
    return posixpath.normpath(value)


def check_text(value: object, what: str) -> str:
    """Free text that will be shell-quoted: only refuse what quoting cannot carry."""
    if not isinstance(value, str):
        raise ParameterError(f"{what} must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise ParameterError(f"{what} contains a NUL byte")
    if len(value) > MAX_TEXT:
        raise ParameterError(f"{what} is {len(value)} characters long; the limit is {MAX_TEXT}")
    return value


def check_within(path: str, root: str | None, what: str) -> str:
    if root is not None:
        root = posixpath.normpath(root)
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            raise ParameterError(f"{what} {path!r} is outside the profile's workdir_root {root!r}")
    return path


def safe_tag(text: str, length: int = 12) -> str:
    """A file-name-safe fragment of an identifier that may come from a hostile message."""
    cleaned = re.sub(r"[^A-Za-z0-9-]", "", text)[:length]
    return cleaned or "noid"
