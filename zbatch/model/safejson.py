"""JSON from the broker, from files and from jobs, parsed with size and depth limits.

Everything zbatch parses comes from someone else: step messages from a shared broker, files
a job wrote (exit and result records, outboxes), a recipe file. `json.loads` alone lets a
hostile document crash the reader (a `RecursionError` 1000 levels down, or later in
`deepcopy`, substitution or `json.dumps`), so every parse goes through `loads` here:

- at most `max_bytes` (default `MAX_MESSAGE_BYTES`, 8 MiB) of input;
- strict UTF-8 (no other encodings, no encoded surrogates);
- at most `max_depth` (default `MAX_DEPTH`, 64) levels of nested arrays and objects, enforced
  by an iterative walk of the result (and a deeper document that makes `json` recurse too
  far is refused the same way), so code that recurses over a parsed value never runs out of
  stack.

`\\ud800`-style escapes of lone surrogates parse (they are valid JSON); `safety.check_text`
refuses them where a value reaches a job script. A profile may change both limits for the
dispatcher's messages (`limits.max_message_bytes`, `limits.max_json_depth`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zbatch.errors import RecipeError

# No legitimate step message (recipe, payload and environment) comes near this.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# A recipe file an operator names on the command line (not a message) may be bigger.
MAX_FILE_BYTES = 64 * 1024 * 1024
# Recipes nest a handful of levels (message > recipe > node > parameters > value); 64 leaves
# ample room while keeping every recursive walk far from Python's recursion limit.
MAX_DEPTH = 64


class JsonError(RecipeError):
    """A JSON document that is too big, too deep or not valid JSON."""


def depth_exceeds(value: object, max_depth: int) -> bool:
    """True when `value` nests arrays/objects more than `max_depth` levels (iteratively)."""
    todo: list[tuple[object, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        todo.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_depth(value: object, what: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse an already-parsed value that nests deeper than `max_depth`."""
    if depth_exceeds(value, max_depth):
        raise JsonError(f"{what}: nested more than {max_depth} levels deep")


def loads(
    data: bytes | bytearray | str,
    what: str,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """The value of a JSON document, or a JsonError (one line naming `what`)."""
    if len(data) > max_bytes:
        raise JsonError(f"{what}: {len(data)} bytes is over the {max_bytes}-byte limit")
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonError(f"{what}: not valid JSON: invalid UTF-8 at byte {exc.start}") from None
    else:
        text = data
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonError(f"{what}: nested more than {max_depth} levels deep") from None
    except ValueError as exc:
        raise JsonError(f"{what}: not valid JSON: {_one_line(exc)}") from None
    check_depth(value, what, max_depth)
    return value


def load_file(
    path: str | Path,
    what: str | None = None,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_depth: int = MAX_DEPTH,
    kind: str = "",
) -> Any:
    """The value of a JSON file, read no further than `max_bytes` (plus one to notice more);
    `kind` names what the file should hold, for the error when it cannot be read."""
    name = what or str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        reading = f"cannot read {kind}" if kind else "cannot read"
        raise JsonError(f"{name}: {reading}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise JsonError(f"{name}: over the {max_bytes}-byte limit")
    return loads(raw, name, max_bytes=max_bytes, max_depth=max_depth)


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
