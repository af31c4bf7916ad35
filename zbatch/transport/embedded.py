"""A durable message queue in one SQLite file: zbatch's no-setup default transport.

Messages are leased, not removed, when received: a consumer that dies before acking leaves the
message to reappear once the lease ends, so a crash loses nothing. A message delivered more than
`max_deliveries` times goes to `dlq.<queue>`, as a quorum queue's delivery limit does.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from zbatch.errors import TransportError
from zbatch.paths import create_private, make_dirs
from zbatch.transport.base import (
    ORIGIN_HEADER,
    REASON_HEADER,
    Delivery,
    Outgoing,
    Settlement,
    Transport,
    after_commit,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    visible_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_queue ON messages (queue, visible_at, id);
CREATE TABLE IF NOT EXISTS broadcasts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL
);
"""
KEEP_BROADCASTS = 1000


class EmbeddedTransport(Transport):
    def __init__(
        self, path: str | Path, lease_s: float = 60.0, max_deliveries: int = 5, poll_s: float = 0.05
    ) -> None:
        self.path = Path(path)
        self.lease_s = lease_s
        self.max_deliveries = max_deliveries
        self.poll_s = poll_s
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.connect()
        if self._db is None:
            raise TransportError(f"embedded queue {self.path} did not open", transient=False)
        return self._db

    def connect(self) -> None:
        if self._db is not None:
            return
        try:
            # Private: 0700 folder, 0600 file (SQLite gives -wal and -shm the same mode).
            make_dirs(self.path.parent)
            create_private(self.path)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise TransportError(f"embedded queue {self.path}: {exc}", transient=False) from None
        self._db = db

    def disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def publish(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        exchange: str = "",  # noqa: ARG002 - no exchanges here: routed by the key alone
        delay: float | None = None,
    ) -> None:
        self._insert(queue, headers, body, delay or 0)

    def broadcast(
        self,
        exchange: str,
        body: bytes,
        headers: dict[str, Any],
        expiration_s: float | None = None,  # noqa: ARG002 - broadcasts are kept until read
    ) -> None:
        with self._transaction():
            self._insert_broadcast(exchange, headers, body)

    def _insert_broadcast(self, exchange: str, headers: dict[str, Any], body: bytes) -> None:
        db = self.db
        db.execute(
            "INSERT INTO broadcasts (exchange, headers, body, created) VALUES (?,?,?,?)",
            (exchange, json.dumps(headers), body, time.time()),
        )
        db.execute(
            "DELETE FROM broadcasts WHERE id <= (SELECT MAX(id) FROM broadcasts) - ?",
            (KEEP_BROADCASTS,),
        )

    def broadcasts(self, exchange: str) -> list[tuple[dict[str, Any], bytes]]:
        rows = self.db.execute(
            "SELECT headers, body FROM broadcasts WHERE exchange = ? ORDER BY id", (exchange,)
        ).fetchall()
        return [(json.loads(h), b) for h, b in rows]

    def _lease_next(self, queue: str) -> Delivery | None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            row = db.execute(
                "SELECT id, headers, body, deliveries FROM messages "
                "WHERE queue = ? AND visible_at <= ? ORDER BY id LIMIT 1",
                (queue, now),
            ).fetchone()
            if row is None:
                return None
            msg_id, headers, body, deliveries = row
            db.execute(
                "UPDATE messages SET visible_at = ?, deliveries = deliveries + 1 WHERE id = ?",
                (now + self.lease_s, msg_id),
            )
        finally:
            db.execute("COMMIT")
        delivery = Delivery(
            msg_id, queue, bytes(body), json.loads(headers), deliveries > 0, deliveries + 1
        )
        if delivery.delivery_count > self.max_deliveries:
            self.dead_letter(delivery, f"delivered {deliveries} times without being acknowledged")
            return self._lease_next(queue)
        return delivery

    def receive(self, queue: str, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + timeout
        while True:
            delivery = self._lease_next(queue)
            if delivery is not None or time.monotonic() >= deadline:
                return delivery
            time.sleep(self.poll_s)

    def ack(self, delivery: Delivery) -> None:
        self.db.execute("DELETE FROM messages WHERE id = ?", (delivery.tag,))

    def nack(self, delivery: Delivery, requeue: bool = True) -> None:
        if requeue:
            self.db.execute(
                "UPDATE messages SET visible_at = ? WHERE id = ?", (time.time(), delivery.tag)
            )
        else:
            self.dead_letter(delivery, "rejected without requeue")

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        headers = {**delivery.headers, REASON_HEADER: reason, ORIGIN_HEADER: delivery.queue}
        with self._transaction():
            self._take(delivery, "dead-lettered")
            self._insert(f"dlq.{delivery.queue}", headers, delivery.body, 0)

    def settle(
        self,
        delivery: Delivery,
        sends: list[Outgoing],
        then: Callable[[Settlement], None] | None = None,
    ) -> Settlement:
        """Insert `sends` and delete `delivery` in one SQLite transaction.

        Every queue exists here, so nothing is undeliverable. A delivery that is no longer
        in the queue (its lease ran out and another consumer took and acknowledged it) is
        refused with nothing sent: whoever holds it now sends its messages.
        """
        with self._transaction():
            self._take(delivery, "sent")
            for outgoing in sends:
                if outgoing.broadcast:
                    self._insert_broadcast(outgoing.exchange, outgoing.headers, outgoing.body)
                else:
                    self._insert(
                        outgoing.queue, outgoing.headers, outgoing.body, outgoing.delay or 0
                    )
        settlement = Settlement(sent=list(sends))
        after_commit(then, settlement, delivery)
        return settlement

    def _take(self, delivery: Delivery, what: str) -> None:
        """Delete the delivery's message inside a transaction; refuse one already gone."""
        gone = self.db.execute("DELETE FROM messages WHERE id = ?", (delivery.tag,))
        if gone.rowcount != 1:
            raise TransportError(
                f"message {delivery.tag} from {delivery.queue!r} is no longer in the embedded "
                f"queue {self.path} (its lease ran out and another consumer settled it?): "
                f"nothing {what}",
                transient=False,
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: committed if the block finishes, else rolled back.

        SQLite failing (disk full, I/O error) is a TransportError, as a broker failing is.
        """
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):  # SQLite may have rolled back already
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise TransportError(f"embedded queue {self.path}: {exc}", transient=True) from None

    def _insert(self, queue: str, headers: dict[str, Any], body: bytes, delay: float) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO messages (queue, headers, body, created, visible_at) VALUES (?,?,?,?,?)",
            (queue, json.dumps(headers), body, now, now + delay),
        )

    def get(self, queue: str) -> Delivery | None:
        """The next message without waiting (the DLQ tools' interface)."""
        return self.receive(queue, 0)

    def queue_depth(self, queue: str) -> int:
        return self.depth(queue)

    def depth(self, queue: str) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (queue,)).fetchone()
        return int(row[0])

    def queues(self) -> dict[str, int]:
        rows = self.db.execute("SELECT queue, COUNT(*) FROM messages GROUP BY queue").fetchall()
        return {q: int(n) for q, n in rows}
