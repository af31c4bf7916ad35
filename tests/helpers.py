"""Helpers shared by the test modules (and by wrapper authors' own tests)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from zbatch.errors import TransportError
from zbatch.service.ledger import Ledger, LedgerEntry

T = TypeVar("T")
SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services"


class ZbatchRun(Protocol):
    def __call__(
        self,
        *args: str,
        timeout: float = ...,
        input_text: str | None = ...,
        env: dict[str, str] | None = ...,
    ) -> subprocess.CompletedProcess[str]: ...


def restart_service(name: str) -> None:
    """`scripts/services/restart NAME`, which returns once the service is usable again."""
    done = subprocess.run(
        [str(SERVICES / "restart"), name], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def retry_transient(action: Callable[[], T], attempts: int = 3) -> T:
    """What a caller does with a transient TransportError: try again."""
    for attempt in range(attempts):
        try:
            return action()
        except TransportError as exc:
            if not exc.transient or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(json.dumps(recipe))
    return path


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the CLI failed the way a user deserves: non-zero, one clear line, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zbatch: error: "), lines[0]
    return lines[0]


def wrapper_step(command: list[str], **extra: Any) -> dict[str, Any]:
    """A recipe node running the generic wrapper on `command`."""
    node: dict[str, Any] = {
        "service": "test step",
        "queue": "cluster.submission",
        "parameters": {"wrapper": "generic", "cluster": {"time_limit": "0:05:00"}},
        "job_parameters": {"command": command},
    }
    node.update(extra)
    return node


def result_records(root: Path) -> list[dict[str, Any]]:
    """Every `zbatch wrap` result record below `root`, in path order."""
    return [json.loads(p.read_text()) for p in sorted(root.rglob("*.result.json"))]


def queue_bodies(root: Path, queue: str) -> list[Any]:
    """The bodies waiting on `queue` in the one embedded queue below `root`."""
    (db,) = root.rglob("queue.sqlite")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT body FROM messages WHERE queue = ?", (queue,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def claim(ledger: Ledger, key: str, **fields: Any) -> LedgerEntry | None:
    """Claim a step in the ledger with placeholder fields; `fields` override them."""
    placeholders: dict[str, Any] = {
        "recipe_id": "r",
        "pointer": 1,
        "profile": "p",
        "profile_source": "p.yaml",
        "scheduler": "slurm",
        "job_name": "j",
        "workdir": "/w",
        "tag": "t",
        "message_path": "/w/m.json",
        "claimed_by": "me",
    }
    return ledger.claim(key, **{**placeholders, **fields})
