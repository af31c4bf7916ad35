"""ActiveMQ through STOMP 1.2 (stomp.py), on the wire as workflows' StompTransport.

Names as workflows builds them: queue `q` is `/queue/<prefix>.q`, the status topic is
`/topic/<prefix>.transient.status`; recipe messages carry `workflows-recipe: True`; sends
are persistent; a delay is ActiveMQ's `AMQ_SCHEDULED_DELAY` (milliseconds), a broadcast's
lifetime its `expires` (epoch milliseconds).

Dead letters follow ActiveMQ's convention: zbatch's `dlq.<queue>` is the broker's
`/queue/DLQ.<prefix>.<queue>`, where ActiveMQ itself puts a message whose redeliveries ran
out (individualDeadLetterStrategy with queuePrefix "DLQ."), so both kinds are in one place.

Guarantees as the pika transport's:
- Subscriptions use `client-individual` acks with `activemq.prefetchSize`; a message is
  acked only when its consumer says so.
- `settle` sends a delivery's onward messages and acks it in one STOMP transaction, whose
  COMMIT carries a receipt: once `settle` returns, the broker has done all of it.
- A plain `publish` asks for a receipt too (the broker holds the message when it returns).
- `nack(requeue=True)` and `dead_letter` are a copy (back to the queue, or to the DLQ) and
  the ack in one transaction: ActiveMQ's own NACK would dead-letter at once.
- A lost connection is reopened lazily by the next call, with bounded backoff; deliveries
  from the old connection are refused at ack time (the broker delivers them again).

NOT thread-safe for callers: use one StompTransport per thread (stomp.py's own receiver
thread only fills per-subscription buffers and signals receipts).
"""

from __future__ import annotations

import itertools
import logging
import queue as queue_module
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stomp
import stomp.exception
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from zbatch.errors import TransportError
from zbatch.transport.base import (
    ORIGIN_HEADER,
    REASON_HEADER,
    Delivery,
    Outgoing,
    Settlement,
    Transport,
    after_commit,
)
from zbatch.transport.stomp_deliveries import DeliveryLog
from zbatch.transport.stomp_settings import StompSettings

__all__ = [
    "BROKER_DLQ_REASON",
    "DEAD_LETTERED_AT_HEADER",
    "REQUEUES_HEADER",
    "StompDelivery",
    "StompTransport",
]

log = logging.getLogger(__name__)

DEAD_LETTERED_AT_HEADER = "x-zbatch-dead-lettered-at"
REQUEUES_HEADER = "x-zbatch-requeues"  # how often zbatch put the message back (nack)
MAX_REASON_CHARS = 2000
# Headers the broker sets on a delivered frame: never copied onto a message zbatch sends.
FRAME_HEADERS = frozenset(
    {
        "destination",
        "message-id",
        "subscription",
        "ack",
        "content-length",
        "content-type",
        "expires",
        "priority",
        "timestamp",
        "persistent",
        "redelivered",
        "receipt",
        "transaction",
        "AMQ_SCHEDULED_DELAY",
    }
)
# Header names ActiveMQ owns (scheduling, JMS properties it sets): never copied onto a copy.
BROKER_PREFIXES = ("AMQ_", "JMS", "activemq.")
# A header name that cannot break a frame: no control character, ':' or backslash.
SAFE_HEADER_NAME = re.compile(r"[^\x00-\x1f\x7f:\\]{1,256}")
# A name ActiveMQ would read as several destinations (","), a wildcard ("*", ">") or a
# path ("/"), or with characters no queue name needs: never sent to.
SAFE_NAME = re.compile(r"[^\s,*>/\\]{1,255}")
# ActiveMQ's own reason on a message it dead-lettered (redeliveries exhausted).
BROKER_DLQ_REASON = "dlqDeliveryFailureCause"
BROKER_DLQ_TEXT = "dead-lettered by ActiveMQ: rejected (NACK) more often than its redelivery limit"
# Where a message ActiveMQ dead-lettered was (a destination, "/queue/zocalo.q").
BROKER_ORIGIN = "original-destination"


@dataclass
class StompDelivery(Delivery):
    """A delivery plus what STOMP needs to ack it: the `ack` id, its subscription and the
    connection it came on (an ack on a later connection would refer to nothing)."""

    ack_id: str = ""
    subscription: str = ""
    generation: int = 0
    destination: str = ""
    message_id: str = ""
    # Delivered before (ActiveMQ's `redelivered`), not a copy zbatch requeued.
    broker_redelivered: bool = False


@dataclass
class _Subscription:
    id: str
    destination: str
    generation: int
    frames: queue_module.SimpleQueue[Any] = field(default_factory=queue_module.SimpleQueue)
    held: set[int] = field(default_factory=set)


@dataclass
class _Pending:
    """A delivery to ack with the frames sent on its behalf, in the next commit."""

    delivery: StompDelivery
    frames: list[tuple[str, bytes, dict[str, str]]]
    settlement: Settlement | None = None
    then: Callable[[Settlement], None] | None = None


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]  # untyped library
    """Runs on stomp.py's receiver thread: hands frames over, nothing more."""

    def __init__(self, owner: StompTransport, generation: int) -> None:
        self.owner = owner
        self.generation = generation

    def on_message(self, frame: Any) -> None:
        self.owner._on_message(self.generation, frame)

    def on_receipt(self, frame: Any) -> None:
        self.owner._on_receipt(frame.headers.get("receipt-id", ""), None)

    def on_error(self, frame: Any) -> None:
        self.owner._on_error(self.generation, frame)

    def on_disconnected(self) -> None:
        self.owner._on_disconnected(self.generation)


class StompTransport(Transport):
    """One STOMP connection; one subscription per queue received from (kept until
    `disconnect()`), each holding up to `settings.prefetch` unacked messages."""

    def __init__(
        self, settings: StompSettings | None = None, delivery_log: Path | None = None
    ) -> None:
        """`delivery_log`: where redeliveries are counted (see stomp_deliveries); without
        one, a message that keeps losing its consumer is redelivered without end."""
        self.settings = settings or StompSettings()
        self._deliveries = DeliveryLog(delivery_log) if delivery_log else None
        self._conn: Any = None
        self._generation = 0
        self._lost = threading.Event()
        self._subs: dict[str, _Subscription] = {}
        self._by_id: dict[str, _Subscription] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._receipts: dict[str, threading.Event] = {}
        self._receipt_errors: dict[str, str] = {}
        self._staged: list[_Pending] = []
        self._errors: list[str] = []
        self._ever_connected = False

    @classmethod
    def from_conf(cls, path: str | None, delivery_log: Path | None = None) -> StompTransport:
        """`--stomp-conf FILE` (zocalo `[stomp]` INI); without one, the environment."""
        settings = StompSettings.from_ini(path) if path else StompSettings.from_env()
        return cls(settings, delivery_log)

    def __repr__(self) -> str:
        return f"StompTransport({self.settings})"

    def __enter__(self) -> StompTransport:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.disconnect()

    # -- names --------------------------------------------------------------------------------

    def queue_destination(self, queue: str) -> str:
        """zbatch's queue name as ActiveMQ's destination (`dlq.q` is `DLQ.<prefix>.q`)."""
        ns = self.settings.namespace
        if queue.startswith("dlq."):
            return f"/queue/DLQ.{ns}{queue[4:]}"
        return f"/queue/{ns}{queue}"

    def logical_queue(self, destination: str) -> str:
        """ActiveMQ's destination as zbatch's queue name (the inverse of queue_destination)."""
        name = destination.removeprefix("/queue/").removeprefix("queue://")
        dead = name.startswith("DLQ.")
        name = name.removeprefix("DLQ.")
        ns = self.settings.namespace
        name = name[len(ns) :] if ns and name.startswith(ns) else name
        return f"dlq.{name}" if dead else name

    def topic_destination(self, topic: str) -> str:
        return f"/topic/{self.settings.namespace}{topic}"

    # -- connection ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._lost.is_set() and self._conn.is_connected()

    def connect(self) -> None:
        if not self.connected:
            self._drop()
            self._open()

    def disconnect(self) -> None:
        """Commit what was settled, then close; the broker puts whatever is still unacked
        back on its queue."""
        if self.connected:
            self._commit_staged()
        self._drop()
        if self._deliveries is not None:
            self._deliveries.close()

    # -- publishing ---------------------------------------------------------------------------

    def publish(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        exchange: str = "",
        delay: float | None = None,
    ) -> None:
        self._commit_staged()
        outgoing = Outgoing(queue, body, headers, exchange, delay)
        why = unroutable(outgoing)
        if why is not None:
            raise TransportError(f"cannot send to {outgoing.destination}: {why}", transient=False)
        destination, frame_headers = self._frame(outgoing)
        what = f"send to {destination}"
        with self._guard(what):
            self._with_receipt(
                what,
                lambda receipt: self._conn.send(
                    destination, body, headers={**frame_headers, "receipt": receipt}
                ),
            )

    def broadcast(
        self, exchange: str, body: bytes, headers: dict[str, Any], expiration_s: float | None = None
    ) -> None:
        """To `/topic/<prefix>.<exchange>`, no receipt: nobody listening loses it, as intended."""
        frame_headers = _text_headers(headers)
        if expiration_s is not None:
            frame_headers["expires"] = str(int((time.time() + expiration_s) * 1000))
        destination = self.topic_destination(exchange)
        with self._guard(f"broadcast to {destination}"):
            self._conn.send(destination, body, headers=frame_headers)

    # -- consuming ----------------------------------------------------------------------------

    def set_prefetch(self, count: int) -> None:
        """Raise the prefetch for subscriptions opened from now on (never lowers it)."""
        if count > self.settings.prefetch:
            self.settings = replace(self.settings, prefetch=count)

    def keep_alive(self) -> None:
        # stomp.py's own thread answers heart-beats; surface a lost connection here.
        self._commit_staged()
        if self._conn is not None and not self.connected:
            log.warning("lost ActiveMQ at %s; reconnecting on the next call", self.where)

    def receive(self, queue: str, timeout: float) -> StompDelivery | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        self._commit_staged()
        with self._guard(f"receive from {queue!r}"):
            sub = self._subscription(queue)
        while True:
            remaining = deadline - time.monotonic()
            try:
                frame = sub.frames.get(timeout=max(min(remaining, 0.5), 0.0))
            except queue_module.Empty:
                if self._lost.is_set() or sub.generation != self._generation:
                    with self._guard(f"receive from {queue!r}"):
                        sub = self._subscription(queue)  # reconnects, subscribes again
                if remaining <= 0:
                    return None
                continue
            if frame is None:  # the connection was dropped: subscribe again on the next turn
                continue
            delivery = self._delivery(sub, queue, frame)
            sub.held.add(delivery.tag)
            if self._past_delivery_limit(delivery):
                continue
            return delivery

    def _past_delivery_limit(self, delivery: StompDelivery) -> bool:
        """Count a redelivery; past the limit, dead-letter it (as a quorum queue would)."""
        if self._deliveries is None or not delivery.broker_redelivered:
            return False
        seen = self._deliveries.redelivered(delivery.message_id)
        delivery.delivery_count = max(delivery.delivery_count, seen + 1)
        if delivery.delivery_count <= self.settings.max_deliveries:
            return False
        reason = (
            f"delivered {delivery.delivery_count} times and never settled (each consumer "
            f"stopped or lost its connection while holding it); the limit is "
            f"{self.settings.max_deliveries}"
        )
        log.warning("message %s from %r: %s", delivery.tag, delivery.queue, reason)
        self.dead_letter(delivery, reason)
        return True

    def get(self, queue: str, wait_s: float = 1.0) -> StompDelivery | None:
        """One message, if one arrives within `wait_s` (STOMP has no basic.get); ack, nack or
        dead-letter it as usual."""
        return self.receive(queue, wait_s)

    def ack(self, delivery: Delivery) -> None:
        self._transaction(delivery, [], f"ack of message {delivery.tag} from {delivery.queue!r}")

    def nack(self, delivery: Delivery, requeue: bool = True) -> None:
        if not requeue:
            self.dead_letter(delivery, "rejected without requeue")
            return
        # A copy to the back of the queue and the ack, in one transaction (see the module).
        sd = self._owned(delivery)
        headers = _kept_headers(delivery.headers)
        headers[REQUEUES_HEADER] = str(_int(headers.get(REQUEUES_HEADER)) + 1)
        copy = (sd.destination, delivery.body, headers)
        what = f"requeueing message {delivery.tag} from {delivery.queue!r}"
        self._transaction(delivery, [copy], what)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Copy to `DLQ.<prefix>.<queue>` and ack in one transaction: one copy, nothing lost."""
        self._owned(delivery)
        copy = self._dead_copy(delivery.queue, delivery.body, delivery.headers, reason, None)
        what = f"dead-lettering message {delivery.tag} from {delivery.queue!r}"
        self._transaction(delivery, [copy], what)

    def settle(
        self,
        delivery: Delivery,
        sends: list[Outgoing],
        then: Callable[[Settlement], None] | None = None,
    ) -> Settlement:
        """Send `sends` and ack `delivery` in one transaction; a send to a name ActiveMQ
        cannot take as one queue goes to the DLQ in the same transaction instead."""
        self._owned(delivery)
        settlement = Settlement()
        frames: list[tuple[str, bytes, dict[str, str]]] = []
        for outgoing in sends:
            why = unroutable(outgoing)
            if why is None:
                settlement.sent.append(outgoing)
                destination, headers = self._frame(outgoing)
                frames.append((destination, outgoing.body, headers))
                continue
            reason = f"{outgoing.what} undeliverable: {why}"
            settlement.undeliverable.append((outgoing, reason))
            origin = outgoing.exchange if outgoing.broadcast else outgoing.queue
            frames.append(
                self._dead_copy(delivery.queue, outgoing.body, outgoing.headers, reason, origin)
            )
        item = _Pending(self._owned(delivery), frames, settlement, then)
        sub = self._by_id[item.delivery.subscription]
        if sub.held - {item.delivery.tag}:
            # Others from this queue are still in hand (submissions in flight): commit with
            # the last of them, or at this transport's next call, whichever comes first.
            sub.held.discard(item.delivery.tag)
            self._staged.append(item)
            return settlement
        self._commit([*self._take_staged(), item], f"settling message {delivery.tag}")
        return settlement

    def _take_staged(self) -> list[_Pending]:
        staged, self._staged = self._staged, []
        return staged

    def _commit_staged(self) -> None:
        """Commit the settlements that wait (see `settle`). A failure is only logged: the
        broker delivers those messages again, and nothing was sent for them."""
        if not self._staged:
            return
        staged = self._take_staged()
        what = f"committing {len(staged)} settled message(s)"
        try:
            self._commit(staged, what)
        except TransportError as exc:
            log.warning("%s failed; the broker will deliver them again: %s", what, exc)

    # -- administration (tests, zbatch dlq) ---------------------------------------------------

    def browse(self, queue: str, limit: int | None = None) -> list[StompDelivery]:
        """The messages waiting in `queue`, oldest first, left where they are (a browser
        subscription, which ActiveMQ ends with a `browser: end` frame)."""
        destination = self.queue_destination(queue)
        found: list[StompDelivery] = []
        with self._guard(f"browse {destination}"):
            sub_id = f"zbatch-browse-{next(self._ids)}"
            sub = _Subscription(sub_id, destination, self._generation)
            self._by_id[sub_id] = sub
            try:
                self._conn.subscribe(destination, sub_id, ack="auto", headers={"browser": "true"})
                while limit is None or len(found) < limit:
                    try:
                        frame = sub.frames.get(timeout=self.settings.receipt_timeout_s)
                    except queue_module.Empty:
                        raise TransportError(
                            f"browsing {destination}: the broker sent no end of the listing",
                            transient=True,
                        ) from None
                    if frame is None or frame.headers.get("browser") == "end":
                        break
                    found.append(self._delivery(sub, queue, frame))
            finally:
                self._by_id.pop(sub_id, None)
                if self.connected:
                    with suppress(stomp.exception.StompException, OSError):
                        self._conn.unsubscribe(sub_id)
        return found

    def queue_depth(self, queue: str) -> int:
        """Messages in `queue`, those delivered and not yet acked included (a browse)."""
        return len(self.browse(queue))

    depth = queue_depth  # the embedded transport's name for it

    def purge(self, queue: str) -> int:
        """Consume and drop what waits in `queue` now (tests and admin only)."""
        count = 0
        while (delivery := self.receive(queue, 0.5)) is not None:
            self.ack(delivery)
            count += 1
        return count

    # -- internals ----------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def _frame(self, outgoing: Outgoing) -> tuple[str, dict[str, str]]:
        """Where and with which headers `outgoing` is sent, as workflows sends it."""
        headers = _text_headers(outgoing.headers)
        if outgoing.broadcast:
            return self.topic_destination(outgoing.exchange), headers
        headers["persistent"] = "true"
        if outgoing.delay:
            headers["AMQ_SCHEDULED_DELAY"] = str(int(1000 * outgoing.delay))
        return self.queue_destination(outgoing.queue), headers

    def _dead_copy(
        self,
        queue: str,
        body: bytes,
        headers: dict[str, Any],
        reason: str,
        origin: str | None,
    ) -> tuple[str, bytes, dict[str, str]]:
        """The copy for `dlq.<queue>`: why, where it was meant to go, when."""
        kept = _kept_headers(headers)
        kept[REASON_HEADER] = _one_line(reason)[:MAX_REASON_CHARS]
        if origin is not None:  # where a send was meant to go (even a bad name)
            kept[ORIGIN_HEADER] = origin
        else:
            kept.setdefault(ORIGIN_HEADER, queue)
        kept[DEAD_LETTERED_AT_HEADER] = datetime.now(UTC).isoformat(timespec="seconds")
        kept["persistent"] = "true"
        return self.queue_destination(f"dlq.{queue}"), body, kept

    def _owned(self, delivery: Delivery) -> StompDelivery:
        sub = self._by_id.get(getattr(delivery, "subscription", ""))
        if (
            not isinstance(delivery, StompDelivery)
            or sub is None
            or delivery.generation != self._generation
            or not self.connected
            or delivery.tag not in sub.held
        ):
            raise TransportError(
                f"message {delivery.tag} from {delivery.queue!r} was delivered on a connection "
                "that has since closed (or was settled already); the broker delivers it again, "
                "so it cannot be acked, nacked or dead-lettered now",
                transient=False,
            )
        return delivery

    def _transaction(
        self, delivery: Delivery, frames: list[tuple[str, bytes, dict[str, str]]], what: str
    ) -> None:
        """Send `frames` and ack `delivery` as one committed transaction, with whatever
        settlements were waiting (see `settle`)."""
        item = _Pending(self._owned(delivery), frames)
        self._commit([*self._take_staged(), item], what)

    def _commit(self, items: list[_Pending], what: str) -> None:
        """Send each item's frames and ack its delivery, all in ONE transaction whose COMMIT
        is confirmed by a receipt; then run their `then`.

        On TransportError none of them is held any more: either the connection is gone (the
        broker delivers them again), or the commit's answer was lost, which leaves the
        transaction done or not done as a whole."""
        for item in items:
            sub = self._by_id.get(item.delivery.subscription)
            if sub is not None:
                sub.held.discard(item.delivery.tag)
            if item.delivery.generation != self._generation or not self.connected:
                self._drop()
                raise TransportError(
                    f"{what}: the connection that delivered message {item.delivery.tag} "
                    "closed; the broker delivers it again",
                    transient=True,
                )
        tx = f"zbatch-tx-{next(self._ids)}"
        with self._guard(what):
            try:
                self._conn.begin(tx)
                for item in items:
                    for destination, body, headers in item.frames:
                        headers = {**headers, "transaction": tx}
                        self._conn.send(destination, body, headers=headers)
                    self._conn.ack(item.delivery.ack_id, transaction=tx)
            except BaseException:
                self._drop()  # an unfinished transaction dies with its connection
                raise
            self._with_receipt(
                what, lambda receipt: self._conn.commit(tx, headers={"receipt": receipt})
            )
        self._forget_counts(items)
        for item in items:
            if item.settlement is not None:
                after_commit(item.then, item.settlement, item.delivery)

    def _forget_counts(self, items: list[_Pending]) -> None:
        """Settled: their redelivery counts are of no use any more."""
        if self._deliveries is None:
            return
        counted = [i.delivery.message_id for i in items if i.delivery.broker_redelivered]
        try:
            self._deliveries.settled(counted)
        except sqlite3.Error as exc:  # a row left behind is pruned after a week
            log.warning("delivery counts (%s): %s", self._deliveries.path, exc)

    def _with_receipt(self, what: str, send: Callable[[str], None]) -> None:
        """Send one frame with a receipt and wait for it; an ERROR answering it, a lost
        connection or no answer in time is a TransportError (the last two drop the
        connection, so nothing half-known stays on it)."""
        receipt = f"zbatch-{next(self._ids)}"
        event = threading.Event()
        with self._lock:
            self._receipts[receipt] = event
        try:
            send(receipt)
            if not event.wait(self.settings.receipt_timeout_s):
                self._drop()
                raise TransportError(
                    f"{what}: no receipt from ActiveMQ at {self.where} within "
                    f"{self.settings.receipt_timeout_s:g}s",
                    transient=True,
                )
        finally:
            with self._lock:
                self._receipts.pop(receipt, None)
                error = self._receipt_errors.pop(receipt, None)
        if error is not None:
            lost = self._lost.is_set()
            if lost:
                self._drop()
            raise TransportError(f"{what} on {self.where}: {error}", transient=lost)

    def _subscription(self, queue: str) -> _Subscription:
        sub = self._subs.get(queue)
        if sub is not None and sub.generation == self._generation:
            return sub
        sub_id = f"zbatch-{next(self._ids)}"
        destination = self.queue_destination(queue)
        sub = _Subscription(sub_id, destination, self._generation)
        self._subs[queue] = sub
        self._by_id[sub_id] = sub
        headers = {"activemq.prefetchSize": str(self.settings.prefetch)}
        self._conn.subscribe(destination, sub_id, ack="client-individual", headers=headers)
        return sub

    def _delivery(self, sub: _Subscription, queue: str, frame: Any) -> StompDelivery:
        headers = dict(frame.headers)
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        redelivered = headers.get("redelivered") == "true"
        requeues = _int(headers.get(REQUEUES_HEADER))
        kept = {k: v for k, v in headers.items() if k not in FRAME_HEADERS}
        # What ActiveMQ dead-lettered itself names where it was: as zbatch's origin header.
        original = kept.pop(BROKER_ORIGIN, None)
        if original and ORIGIN_HEADER not in kept:
            kept[ORIGIN_HEADER] = self.logical_queue(original)
            # ActiveMQ gives no reason of its own: its redelivery limit (NACKs) ran out.
            kept.setdefault(REASON_HEADER, BROKER_DLQ_TEXT)
        return StompDelivery(
            tag=next(self._ids),
            queue=queue,
            body=body,
            headers=kept,
            redelivered=redelivered or requeues > 0,
            delivery_count=1 + requeues + (1 if redelivered else 0),
            ack_id=headers.get("ack") or headers.get("message-id", ""),
            message_id=headers.get("message-id", ""),
            broker_redelivered=redelivered,
            subscription=sub.id,
            generation=sub.generation,
            destination=sub.destination,
        )

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Connect if needed; turn stomp.py's errors into TransportError."""
        self._ensure_connected()
        try:
            yield
        except (stomp.exception.StompException, OSError) as exc:
            self._drop()
            detail = _describe(exc)
            raise TransportError(f"{what} on {self.where}: {detail}", transient=True) from None

    def _ensure_connected(self) -> None:
        if self.connected:
            return
        if self._conn is not None:
            log.warning("lost ActiveMQ at %s: %s", self.where, self._last_error() or "closed")
        self._drop()
        if not self._ever_connected:
            self._open()
            return
        retrying = Retrying(
            stop=stop_after_delay(self.settings.reconnect_s),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception(lambda e: isinstance(e, TransportError) and e.transient),
            before_sleep=self._log_retry,
            reraise=True,
        )
        retrying(self._open)

    def _log_retry(self, state: RetryCallState) -> None:
        log.warning(
            "reconnecting to ActiveMQ (attempt %d): %s",
            state.attempt_number,
            state.outcome.exception() if state.outcome else "",
        )

    def _open(self) -> None:
        s = self.settings
        self._generation += 1
        generation = self._generation
        self._lost.clear()
        with self._lock:
            self._errors.clear()
        conn = stomp.Connection12(
            [(s.host, s.port)],
            heartbeats=(s.heartbeat_ms, s.heartbeat_ms),
            reconnect_attempts_max=1,
            auto_decode=False,
            timeout=s.receipt_timeout_s,
        )
        conn.set_listener("zbatch", _Listener(self, generation))
        try:
            conn.connect(s.username or None, s.password or None, wait=False)
            _no_delay(conn)
            deadline = time.monotonic() + s.receipt_timeout_s
            while not conn.is_connected() and not self._lost.is_set():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        except (stomp.exception.StompException, OSError) as exc:
            self._lost.set()
            with suppress(Exception):
                conn.disconnect()
            raise TransportError(
                f"cannot connect to ActiveMQ at {self.where}: {_describe(exc)}", transient=True
            ) from None
        if not conn.is_connected() or self._lost.is_set():
            error = self._last_error()
            with suppress(Exception):
                conn.disconnect()
            # ActiveMQ refuses a login with a SecurityException: no use trying again.
            refused = error is not None and any(w in error for w in ("ecurity", "assword"))
            raise TransportError(
                f"cannot connect to ActiveMQ at {self.where}: "
                f"{s.redact(error) if error else 'no CONNECTED answer'}",
                transient=not refused,
            )
        self._conn = conn
        self._ever_connected = True
        log.info("connected to ActiveMQ at %s", s)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._lost.set()
        if self._staged:
            log.warning(
                "%d settled message(s) were not committed before the connection closed; the "
                "broker will deliver them again",
                len(self._staged),
            )
            self._staged = []
        for sub in self._by_id.values():
            sub.frames.put(None)  # wakes a browse waiting on it
        self._subs.clear()
        self._by_id.clear()
        with self._lock:
            for receipt, event in self._receipts.items():
                self._receipt_errors.setdefault(receipt, "the connection closed")
                event.set()
        if conn is not None:
            with suppress(Exception):
                conn.disconnect()

    def _last_error(self) -> str | None:
        with self._lock:
            return self._errors[-1] if self._errors else None

    # -- called on stomp.py's receiver thread ----------------------------------------------

    def _on_message(self, generation: int, frame: Any) -> None:
        if generation != self._generation:
            return  # the broker redelivers what an old connection held
        sub = self._by_id.get(frame.headers.get("subscription", ""))
        if sub is not None:
            sub.frames.put(frame)

    def _on_receipt(self, receipt: str, error: str | None) -> None:
        with self._lock:
            event = self._receipts.get(receipt)
            if event is None:
                return
            if error is not None:
                self._receipt_errors[receipt] = error
            event.set()

    def _on_error(self, generation: int, frame: Any) -> None:
        message = frame.headers.get("message", "")
        body = frame.body.decode("utf-8", "replace") if isinstance(frame.body, bytes) else ""
        text = _one_line(f"{message}: {body.splitlines()[0] if body else ''}".rstrip(": "))
        text = self.settings.redact(text)[:500]
        receipt = frame.headers.get("receipt-id")
        with self._lock:
            self._errors.append(text)
            del self._errors[:-10]
        log.debug("ActiveMQ error frame (connection %d): %s", generation, text)
        if receipt:
            self._on_receipt(receipt, text)

    def _on_disconnected(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._lost.set()
        with self._lock:
            for receipt, event in self._receipts.items():
                self._receipt_errors.setdefault(receipt, "the connection closed")
                event.set()


def unroutable(outgoing: Outgoing) -> str | None:
    """Why ActiveMQ cannot take `outgoing`'s destination as one plain name, or None."""
    name = outgoing.exchange if outgoing.broadcast else outgoing.queue
    if outgoing.exchange and not outgoing.broadcast:
        return f"exchange {outgoing.exchange!r}: ActiveMQ has no exchanges (STOMP transport)"
    if not SAFE_NAME.fullmatch(name):
        return (
            f"name {name[:60]!r} holds a character ActiveMQ reads as a composite, wildcard or "
            "path (',', '*', '>', '/', '\\' or white space), or is empty"
        )
    return None


def _text_headers(headers: dict[str, Any]) -> dict[str, str]:
    """STOMP header values are text: True as workflows sends it ("True"), others by str().

    stomp.py escapes values but not names: a name that could end a header line or hold a
    ':' (from another producer's message, copied to a DLQ) is dropped, never sent."""
    out = {}
    for key, value in headers.items():
        name = str(key)
        if SAFE_HEADER_NAME.fullmatch(name):
            out[name] = str(value).replace("\x00", "")
        else:
            log.debug("header %.60r dropped: no STOMP header name", name)
    return out


def _kept_headers(headers: dict[str, Any]) -> dict[str, str]:
    """The headers of a received message that a copy of it (requeued, dead-lettered,
    replayed) carries: not the broker's own, nor its scheduling orders (a copied
    AMQ_SCHEDULED_REPEAT would make the broker send the copy again and again)."""
    return {
        k: v
        for k, v in _text_headers(headers).items()
        if k not in FRAME_HEADERS and not k.startswith(BROKER_PREFIXES)
    }


def _int(value: object) -> int:
    try:
        return max(int(str(value)), 0) if value is not None else 0
    except ValueError:
        return 0


def _no_delay(conn: Any) -> None:
    """TCP_NODELAY on stomp.py's socket: it writes each frame on its own, and Nagle's
    algorithm would hold a COMMIT back behind the BEGIN until the broker's delayed ack
    (measured: 22 transactions/s with it, 2000/s without)."""
    sock = getattr(conn.transport, "socket", None)
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, stomp.exception.ConnectFailedException):
        return "connection refused, or closed before ActiveMQ answered"
    detail = str(exc) or ", ".join(repr(a) for a in exc.args) or "no detail"
    return f"{type(exc).__name__}: {detail}"
