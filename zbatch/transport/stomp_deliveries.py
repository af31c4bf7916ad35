"""How often ActiveMQ has delivered a message that no consumer settled, kept on disk.

RabbitMQ's quorum queues count deliveries and dead-letter a message past the limit, so a
message that kills its consumer every time (or is held by consumers that keep disconnecting)
ends in the DLQ instead of looping. ActiveMQ counts only NACKs (its redelivery plugin), not
deliveries cut off by a disconnect, and tells a STOMP client only `redelivered: true`. The STOMP
transport therefore counts each redelivery itself, by the broker's `message-id`, in this small
SQLite file beside the dispatcher's ledger (shared by the replicas that share the ledger), so the
count survives the consumer's own crash. A row is removed when its message is settled.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from zbatch.paths import make_dirs

# Rows of messages never seen again (settled by another host's replica) are dropped after this.
FORGET_AFTER_S = 7 * 24 * 3600


class DeliveryLog:
    """message-id -> redeliveries seen; opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            make_dirs(self.path.parent)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute(
                "CREATE TABLE IF NOT EXISTS redeliveries "
                "(message_id TEXT PRIMARY KEY, count INTEGER NOT NULL, seen REAL NOT NULL)"
            )
            db.execute("DELETE FROM redeliveries WHERE seen < ?", (time.time() - FORGET_AFTER_S,))
            self._db = db
        return self._db

    def redelivered(self, message_id: str) -> int:
        """Count one more redelivery of `message_id`; returns how many were seen."""
        with self._lock:
            db = self._open()
            db.execute(
                "INSERT INTO redeliveries VALUES (?, 1, ?) ON CONFLICT(message_id) "
                "DO UPDATE SET count = count + 1, seen = excluded.seen",
                (message_id, time.time()),
            )
            row = db.execute(
                "SELECT count FROM redeliveries WHERE message_id = ?", (message_id,)
            ).fetchone()
            return int(row[0])

    def settled(self, message_ids: list[str]) -> None:
        if not message_ids:
            return
        with self._lock:
            self._open().executemany(
                "DELETE FROM redeliveries WHERE message_id = ?", [(m,) for m in message_ids]
            )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
