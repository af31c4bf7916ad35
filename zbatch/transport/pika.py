"""RabbitMQ through pika's BlockingConnection, on the wire exactly like workflows' PikaTransport.

NOT thread-safe: a BlockingConnection belongs to the thread that uses it, so make one
PikaTransport per thread (the heartbeat thread builds its own through a factory).

Deliberate differences from workflows:
- Publisher confirms are on: publish() returns once the broker holds the message, and a
  mandatory publish nobody can route, or a broker nack, raises instead of vanishing.
- Every consuming channel is transactional (workflows does this only on request, with
  `transaction_begin`): `settle` sends a message's onward messages and acks it in one
  commit, and a dead letter is its DLQ copy and the ack in one commit.
- Consumers pull (`receive` with a timeout) instead of getting callbacks on a pika thread.
- A lost connection (broker restart) is reopened lazily by the next call, with bounded backoff.
  Delivery tags are per channel, so a delivery from a closed channel is refused at ack time:
  the broker has already requeued it and will deliver it again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

import pika
import pika.exceptions as pe
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
from zbatch.transport.rabbit_settings import RabbitSettings
from zbatch.transport.rabbit_wire import (
    DELIVERY_COUNT_HEADER,
    Pending,
    PikaDelivery,
    QueueChannel,
    Returned,
    Wire,
    connection_parameters,
    describe,
    is_transient,
    make_delivery,
)

__all__ = ["DEAD_LETTERED_AT_HEADER", "DELAYED_EXCHANGE", "PikaDelivery", "PikaTransport"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEAD_LETTERED_AT_HEADER = "x-zbatch-dead-lettered-at"
DELAYED_EXCHANGE = "delayed"  # workflows' name for the x-delayed-message exchange
MAX_REASON_CHARS = 2000  # header values travel in one frame; a reason needs no more
MAX_NAME_BYTES = 255  # AMQP short string: the longest queue or exchange name
# How long a queue or exchange seen to exist (or to be missing) is taken as such before
# settle checks it again. A queue deleted meanwhile is still caught: the broker returns
# what it cannot route, and settle dead-letters it after the commit.
EXISTS_CACHE_S = 60.0
MISSING_CACHE_S = 5.0


def _queue_frames(qc: QueueChannel, items: list[Pending]) -> None:
    """Queue every publish and ack (or requeue) of `items` on the channel, unsent.

    Pika's channel under the blocking adapter: its publishes and acks are queued and go out
    together with the commit (the blocking wrappers would flush the socket once per frame;
    on a transactional channel they add nothing else).
    """
    frames = qc.channel._impl
    for item in items:
        for w in item.wires:
            frames.basic_publish(
                w.exchange, w.routing_key, w.body, w.properties, mandatory=w.mandatory
            )
        if item.requeue:
            frames.basic_nack(item.delivery.tag, requeue=True)
        else:
            frames.basic_ack(item.delivery.tag)


class PikaTransport(Transport):
    """One connection: a confirmed send channel plus one channel per queue received from.

    The first `receive(queue)` starts a consumer that stays until `disconnect()`; up to
    `settings.prefetch` of its messages may wait unacked in this process meanwhile.

    Each queue's channel is transactional (as workflows' `transaction_begin` on a
    subscription, which dlstbx's cluster service uses): `settle` publishes a delivery's
    onward messages and acks it in one transaction, and `ack`, `nack` and `dead_letter`
    commit theirs too (on a transactional channel nothing happens before the commit).
    While other deliveries from the queue are still in hand, a settlement waits to share
    one commit with theirs (group commit, see `settle`). Confirms cannot be used on a
    transactional channel, so plain `publish` keeps a confirmed channel of its own.
    """

    def __init__(self, settings: RabbitSettings | None = None) -> None:
        self.settings = settings or RabbitSettings()
        self._conn: Any = None
        self._send: Any = None
        self._queues: dict[str, QueueChannel] = {}
        self._generation = 0
        self._ever_connected = False
        # ("queue" | "exchange", name) -> (exists, until when that answer is trusted)
        self._known: dict[tuple[str, str], tuple[bool, float]] = {}

    @classmethod
    def from_conf(cls, path: str | None) -> PikaTransport:
        """`--rabbit-conf FILE` (zocalo INI); without one, the environment or the defaults."""
        settings = RabbitSettings.from_ini(path) if path else RabbitSettings.from_env()
        return cls(settings)

    def __repr__(self) -> str:
        return f"PikaTransport({self.settings})"

    def __enter__(self) -> PikaTransport:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.disconnect()

    @property
    def connected(self) -> bool:
        return self._conn is not None and bool(self._conn.is_open)

    def connect(self) -> None:
        if not self.connected:
            self._open(self.settings.connection_attempts)

    def disconnect(self) -> None:
        """Commit what was settled, then close; the broker requeues whatever is left unacked."""
        if self.connected:
            self._commit_staged()
        self._drop()

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
        self._publish(wire(Outgoing(queue, body, headers, exchange, delay)))

    def broadcast(
        self, exchange: str, body: bytes, headers: dict[str, Any], expiration_s: float | None = None
    ) -> None:
        expiration = None if expiration_s is None else str(int(expiration_s * 1000))
        props = pika.BasicProperties(headers=dict(headers), delivery_mode=2, expiration=expiration)
        self._publish(Wire(exchange, "", body, props, mandatory=False))

    def _publish(self, w: Wire) -> None:
        self._commit_staged()
        via = f"exchange {w.exchange!r}" if w.exchange else "the default exchange"
        with self._guard(f"publish to {w.routing_key!r} via {via}"):
            if self._send is None or not self._send.is_open:
                self._send = self._conn.channel()
                self._send.confirm_delivery()
            self._send.basic_publish(
                w.exchange, w.routing_key, w.body, w.properties, mandatory=w.mandatory
            )

    # -- consuming ----------------------------------------------------------------------------

    def keep_alive(self) -> None:
        if self.connected:
            self._commit_staged()
            with self._guard("heartbeat"):
                self._conn.process_data_events(time_limit=0)

    def set_prefetch(self, count: int) -> None:
        """Raise the prefetch for consumers opened from now on (never lowers the setting)."""
        if count > self.settings.prefetch:
            self.settings = dataclasses.replace(self.settings, prefetch=count)

    def receive(self, queue: str, timeout: float) -> PikaDelivery | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        self._commit_staged()
        with self._guard(f"receive from {queue!r}"):
            qc = self._queue_channel(queue)
            if qc.consumer_tag is None:
                callback = functools.partial(self._on_message, qc, queue)
                qc.consumer_tag = qc.channel.basic_consume(queue, callback, auto_ack=False)
            while not qc.buffer:
                remaining = deadline - time.monotonic()
                self._conn.process_data_events(time_limit=max(remaining, 0.0))
                if remaining <= 0:
                    break
            if not qc.buffer:
                return None
            delivery = qc.buffer.popleft()
            qc.held.add(delivery.tag)
            return delivery

    def get(self, queue: str) -> PikaDelivery | None:
        """One message without consuming (basic_get); ack, nack or dead-letter it as usual."""
        self._commit_staged()
        with self._guard(f"get from {queue!r}"):
            qc = self._queue_channel(queue)
            method, props, body = qc.channel.basic_get(queue, auto_ack=False)
            if method is None:
                return None
            qc.held.add(method.delivery_tag)
            return make_delivery(qc, queue, method, props, body)

    def ack(self, delivery: Delivery) -> None:
        what = f"ack of message {delivery.tag} from {delivery.queue!r}"
        self._settle_now(Pending(self._pika(delivery)), what)

    def nack(self, delivery: Delivery, requeue: bool = True) -> None:
        if not requeue:
            # As the embedded twin: a rejected message lands in the DLQ with a reason.
            self.dead_letter(delivery, "rejected without requeue")
            return
        what = f"nack of message {delivery.tag} from {delivery.queue!r}"
        self._settle_now(Pending(self._pika(delivery), requeue=True), what)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Copy to `dlq.<queue>` and ack in one transaction: one copy, and nothing lost.

        The copy keeps the original headers and adds the reason, origin queue and time.
        """
        what = f"dead-lettering message {delivery.tag} from {delivery.queue!r}"
        with self._guard(what):
            qc = self._owning(delivery)  # refuse a stale delivery before copying it
        try:
            self._require_dlq(delivery)
        except TransportError:
            self._release(qc, [Pending(self._pika(delivery))])
            raise
        headers = {k: v for k, v in delivery.headers.items() if k != DELIVERY_COUNT_HEADER}
        copy = dead_copy(delivery.queue, delivery.body, headers, reason, delivery.queue)
        self._settle_now(Pending(self._pika(delivery), [copy]), what)

    def settle(
        self,
        delivery: Delivery,
        sends: list[Outgoing],
        then: Callable[[Settlement], None] | None = None,
    ) -> Settlement:
        """Publish `sends` and ack `delivery` in one AMQP transaction on its own channel.

        A send whose queue (or exchange) does not exist is dead-lettered in the same
        transaction instead (see `Transport.settle`); existence is checked beforehand with
        a passive declare, cached. Should the broker still return one as unroutable (a
        queue deleted since the check), the commit has already acked the delivery: the
        returned message is then dead-lettered in a second transaction.

        Group commit: while this consumer still holds other deliveries from the same queue
        (a dispatcher's submissions in flight), the settlement waits for the commit of the
        last of them or for this transport's next call (receive, publish, ...), so one
        commit serves several messages. `then` runs after the commit.
        """
        what = f"settling message {delivery.tag} from {delivery.queue!r}"
        qc = self._owning(delivery)  # refuse a stale delivery before checking routes
        settlement = Settlement()
        item = Pending(self._pika(delivery), settlement=settlement, then=then)
        try:
            for outgoing in sends:
                why = self._unroutable(outgoing)
                if why is None:
                    settlement.sent.append(outgoing)
                    item.wires.append(checked(wire(outgoing)))
                    continue
                reason = f"{outgoing.what} undeliverable: {why}"
                settlement.undeliverable.append((outgoing, reason))
                item.wires.append(checked(undeliverable_copy(delivery.queue, outgoing, reason)))
            if settlement.undeliverable:
                self._require_dlq(delivery)
        except pe.AMQPError as exc:  # a header AMQP cannot carry
            self._release(qc, [item])
            raise TransportError(f"{what}: {self._describe(exc)}", transient=False) from None
        except TransportError:
            self._release(qc, [item])
            raise
        if qc is self._queues.get(delivery.queue) and qc.held - {delivery.tag}:
            qc.staged.append(item)  # committed with the last one in hand, or sooner
            qc.held.discard(delivery.tag)
        else:
            self._settle_now(item, what)
        return settlement

    # -- queue administration (tests, setup_broker, zbatch dlq) --------------------------------

    def admin(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run `operation(channel)` on a throwaway channel: a broker refusal closes only it."""
        with self._guard(what):
            channel = self._conn.channel()
            try:
                return operation(channel)
            finally:
                if channel.is_open:
                    channel.close()

    def queue_depth(self, queue: str) -> int:
        """Messages ready in `queue` (not counting those delivered and unacked)."""
        return int(
            self.admin(
                f"depth of {queue!r}",
                lambda ch: ch.queue_declare(queue, passive=True).method.message_count,
            )
        )

    depth = queue_depth  # the embedded transport's name for it

    def purge(self, queue: str) -> int:
        return int(
            self.admin(f"purge {queue!r}", lambda ch: ch.queue_purge(queue).method.message_count)
        )

    def delete_queue(self, queue: str) -> None:
        self.admin(f"delete {queue!r}", lambda ch: ch.queue_delete(queue))

    # -- internals ----------------------------------------------------------------------------

    def _queue_channel(self, queue: str) -> QueueChannel:
        qc = self._queues.get(queue)
        if qc is not None and qc.channel.is_open:
            return qc
        if qc is not None:
            self._forget(qc)
        channel = self._conn.channel()
        # Consumers never declare queues (workflows doesn't): a passive declare only checks
        # that it exists, and a 404 closes this fresh channel alone.
        channel.queue_declare(queue, passive=True)
        channel.basic_qos(prefetch_count=self.settings.prefetch)
        channel.tx_select()
        channel.add_on_cancel_callback(lambda _frame: self._on_cancel(queue))
        self._generation += 1
        qc = self._queues[queue] = QueueChannel(channel, self._generation)
        channel.add_on_return_callback(functools.partial(self._on_return, qc))
        return qc

    def _on_return(self, qc: QueueChannel, _ch: Any, method: Any, _props: Any, body: bytes) -> None:
        qc.returned.append(
            Returned(method.exchange, method.routing_key, body, str(method.reply_text))
        )

    def _settle_now(self, item: Pending, what: str) -> None:
        """Commit `item` now, with whatever its channel had staged."""
        with self._guard(what):
            qc = self._owning(item.delivery)
        staged, qc.staged = qc.staged, []
        qc.held.discard(item.delivery.tag)
        try:
            self._commit(qc, [*staged, item], what)
        except TransportError:
            raise
        except BaseException:
            # Rolled back. The staged ones are not to blame: commit them on their own.
            qc.held.add(item.delivery.tag)
            qc.staged = staged + qc.staged
            raise

    def _commit_staged(self) -> None:
        """Commit the settlements that wait for a commit (see `settle`). A failure is only
        logged: the broker delivers those messages again, and nothing was sent for them."""
        for qc in list(self._queues.values()):
            if not qc.staged:
                continue
            staged, qc.staged = qc.staged, []
            what = f"committing {len(staged)} settled message(s)"
            try:
                self._commit(qc, staged, what)
            except TransportError as exc:
                log.warning("%s failed; the broker will deliver them again: %s", what, exc)
            except Exception:
                log.exception("%s failed; requeueing them", what)
                self._release(qc, staged)

    def _commit(self, qc: QueueChannel, items: list[Pending], what: str) -> None:
        """Publish and ack (or requeue) each of `items` in ONE transaction, then run their
        `then`. On TransportError none of them is held any more (the channel is gone, or they
        were requeued); on any other error the transaction is rolled back and all are held.
        """
        try:
            with self._guard(what):
                for item in items:
                    if self._owning(item.delivery) is not qc:
                        raise pe.ChannelWrongStateError("settled on another channel")
                qc.returned.clear()
                _queue_frames(qc, items)
                # A lost answer to this commit is not retried: had the commit happened, the
                # messages are acked; had it not, the broker delivers them again. Either way
                # each onward message goes out once.
                qc.channel.tx_commit()
        except TransportError:
            self._release(qc, items)
            raise
        except BaseException:
            self._rollback(qc)
            raise
        returned = self._returned(qc, items, what)
        if returned:
            self._dead_letter_returned(qc, items, returned)
        for item in items:
            if item.settlement is not None:
                after_commit(item.then, item.settlement, item.delivery)

    def _returned(self, qc: QueueChannel, items: list[Pending], what: str) -> list[Returned]:
        """What the broker returned as unroutable from the transaction just committed."""
        if not any(w.mandatory for item in items for w in item.wires):
            return []
        try:
            # The broker sends basic.return before tx.commit-ok: pika has queued the
            # returns; this hands them to `_on_return`.
            self._conn.process_data_events(time_limit=0)
        except pe.AMQPError as exc:
            log.warning(
                "%s: committed, but the connection dropped before any returned message "
                "was read: %s",
                what,
                self._describe(exc),
            )
            self._drop()
            return []
        return list(qc.returned)

    def _rollback(self, qc: QueueChannel) -> None:
        """Undo an uncommitted transaction; if that fails, close the channel (which requeues
        its deliveries) rather than leave a half-made transaction on it."""
        try:
            if qc.channel.is_open:
                qc.channel.tx_rollback()
        except Exception:  # noqa: BLE001 - any failure here ends in closing the channel
            self._close_queue_channel(qc)

    def _release(self, qc: QueueChannel, items: list[Pending]) -> None:
        """Never hold deliveries whose settlement failed: if their channel is still open,
        roll back and requeue them (the broker delivers them again, counting a delivery)."""
        for item in items:
            qc.held.discard(item.delivery.tag)
        held = [
            i.delivery
            for i in items
            if i.delivery.generation == qc.generation
            and self._queues.get(i.delivery.queue) is qc
            and qc.channel.is_open
            and self.connected
        ]
        if not held:
            return  # their channel is gone: the broker has requeued them already
        try:
            qc.channel.tx_rollback()
            for delivery in held:
                qc.channel.basic_nack(delivery.tag, requeue=True)
            qc.channel.tx_commit()
        except Exception:  # noqa: BLE001 - closing the channel requeues them just as well
            log.warning(
                "closing the channel of %s to requeue %d message(s)", held[0].queue, len(held)
            )
            self._close_queue_channel(qc)

    def _close_queue_channel(self, qc: QueueChannel) -> None:
        for queue in [q for q, known in self._queues.items() if known is qc]:
            del self._queues[queue]
        self._forget(qc)
        with suppress(Exception):
            if qc.channel.is_open:
                qc.channel.close()

    def _forget(self, qc: QueueChannel) -> None:
        """A channel is gone: what it had staged was never committed (the broker requeues)."""
        if qc.staged:
            log.warning(
                "%d settled message(s) were not committed before their channel closed; the "
                "broker will deliver them again",
                len(qc.staged),
            )
            qc.staged = []

    def _pika(self, delivery: Delivery) -> PikaDelivery:
        if not isinstance(delivery, PikaDelivery):
            self._owning(delivery)  # raises: not one of ours
            raise TransportError(
                f"message {delivery.tag} is not a RabbitMQ delivery", transient=False
            )
        return delivery

    def _unroutable(self, outgoing: Outgoing) -> str | None:
        """Why `outgoing` cannot be delivered (its queue or exchange is missing), or None.

        Mandatory publishes to a named exchange can still be returned (no binding for the
        key): the broker's basic.return catches those.
        """
        w = wire(outgoing)
        for name in (w.exchange, w.routing_key):
            if len(name.encode()) > MAX_NAME_BYTES:
                return f"name {name[:60]!r}... is longer than {MAX_NAME_BYTES} bytes"
        if w.exchange:
            if not self._exists("exchange", w.exchange):
                return f"exchange {w.exchange!r} does not exist"
            return None
        if not self._exists("queue", w.routing_key):
            return f"queue {w.routing_key!r} does not exist"
        return None

    def _exists(self, kind: str, name: str) -> bool:
        """Whether a queue or exchange exists (a passive declare on a throwaway channel,
        remembered for a while)."""
        now = time.monotonic()
        known = self._known.get((kind, name))
        if known is not None and now < known[1]:
            return known[0]

        def check(channel: Any) -> bool:
            try:
                if kind == "queue":
                    channel.queue_declare(name, passive=True)
                else:
                    channel.exchange_declare(name, passive=True)
            except pe.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return False
                if exc.reply_code == 405:  # exclusive to another connection: it is there
                    return True
                raise
            return True

        exists = self.admin(f"check that {kind} {name!r} exists", check)
        self._known[(kind, name)] = (exists, now + (EXISTS_CACHE_S if exists else MISSING_CACHE_S))
        return exists

    def _require_dlq(self, delivery: Delivery) -> None:
        """Refuse a delivery that cannot be dead-lettered: there is no `dlq.<queue>`."""
        dlq = f"dlq.{delivery.queue}"
        if self._exists("queue", dlq):
            return
        raise TransportError(
            f"cannot dead-letter message {delivery.tag} from {delivery.queue!r}: queue {dlq!r} "
            "does not exist (`zbatch broker setup --queue QUEUE` declares it); the message was "
            "requeued",
            transient=False,
        )

    def _dead_letter_returned(
        self, qc: QueueChannel, items: list[Pending], returned: list[Returned]
    ) -> None:
        """After a commit: dead-letter the sends the broker could not route after all."""
        copies: list[Wire] = []
        lost: list[str] = []
        for back in returned:
            found = next(
                (
                    (item, item.settlement, o)
                    for item in items
                    if item.settlement is not None
                    for o in item.settlement.sent
                    if (wire(o).exchange, wire(o).routing_key, o.body)
                    == (back.exchange, back.routing_key, back.body)
                ),
                None,
            )
            if found is None:  # a dead-letter copy came back: its DLQ was deleted
                log.error("a dead letter was lost (%s): %s", back.routing_key, back.reply_text)
                continue
            item, settled, outgoing = found
            settled.sent.remove(outgoing)
            w = wire(outgoing)
            self._known.pop(
                ("exchange" if w.exchange else "queue", w.exchange or w.routing_key), None
            )
            reason = (
                f"{outgoing.what} undeliverable: the broker could not route it to "
                f"{outgoing.destination} ({back.reply_text})"
            )
            settled.undeliverable.append((outgoing, reason))
            copies.append(undeliverable_copy(item.delivery.queue, outgoing, reason))
            lost.append(reason)
        if not copies:
            return
        what = f"dead-lettering {len(copies)} message(s) the broker could not route"
        try:
            with self._guard(what):
                if self._queues.get(items[0].delivery.queue) is not qc:
                    raise pe.ChannelWrongStateError("the channel closed")
                for w in copies:
                    qc.channel.basic_publish(
                        w.exchange, w.routing_key, w.body, w.properties, mandatory=True
                    )
                qc.channel.tx_commit()
        except TransportError as exc:
            for reason in lost:
                log.error("%s; its dead letter was lost too: %s", reason, exc)

    def _on_message(
        self, qc: QueueChannel, queue: str, _ch: Any, method: Any, props: Any, body: bytes
    ) -> None:
        qc.buffer.append(make_delivery(qc, queue, method, props, body))

    def _on_cancel(self, queue: str) -> None:
        # The broker cancelled our consumer (queue deleted): the next receive re-checks it.
        qc = self._queues.get(queue)
        if qc is not None:
            qc.consumer_tag = None

    def _owning(self, delivery: Delivery) -> QueueChannel:
        qc = self._queues.get(delivery.queue)
        stale = (
            not isinstance(delivery, PikaDelivery)
            or qc is None
            or qc.generation != delivery.generation
            or not qc.channel.is_open
        )
        if stale or qc is None:
            raise TransportError(
                f"message {delivery.tag} from {delivery.queue!r} was delivered on a channel that "
                "has since closed (reconnect?); the broker has requeued it and will deliver it "
                "again, so it cannot be acked, nacked or dead-lettered now",
                transient=False,
            )
        return qc

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Connect if needed; turn pika errors into TransportError, dropping what they broke."""
        self._ensure_connected()
        try:
            yield
        except pe.AMQPError as exc:
            if isinstance(exc, pe.AMQPConnectionError) or not self.connected:
                self._drop()
            else:
                self._prune_closed_channels()
            raise TransportError(
                f"{what} on {self.settings.where}: {self._describe(exc)}",
                transient=is_transient(exc),
            ) from None

    def _ensure_connected(self) -> None:
        if self.connected:
            try:
                # Surfaces a close the broker already sent (a restart) before we use the socket.
                self._conn.process_data_events(time_limit=0)
                return
            except pe.AMQPError as exc:
                log.warning("lost RabbitMQ at %s: %s", self.settings.where, self._describe(exc))
        self._drop()  # whatever is left of a closed connection
        if not self._ever_connected:
            self._open(self.settings.connection_attempts)
            return
        retrying = Retrying(
            stop=stop_after_delay(self.settings.reconnect_s),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception(lambda e: isinstance(e, TransportError) and e.transient),
            before_sleep=self._log_retry,
            reraise=True,
        )
        retrying(self._open, 1)

    def _log_retry(self, state: RetryCallState) -> None:
        log.warning(
            "reconnecting to RabbitMQ (attempt %d): %s",
            state.attempt_number,
            state.outcome.exception() if state.outcome else "",
        )

    def _open(self, attempts: int) -> None:
        s = self.settings
        params = connection_parameters(s, attempts)
        try:
            self._conn = pika.BlockingConnection(params)
        except (pe.AMQPError, OSError) as exc:  # OSError: name resolution is not wrapped
            raise TransportError(
                f"cannot connect to RabbitMQ at {s.where}: {self._describe(exc)}",
                transient=is_transient(exc),
            ) from None
        self._ever_connected = True
        log.info("connected to RabbitMQ at %s", s)

    def _drop(self) -> None:
        conn, self._conn, self._send = self._conn, None, None
        for qc in self._queues.values():
            self._forget(qc)
        self._queues.clear()  # their deliveries are now stale; the broker requeues them
        if conn is not None and conn.is_open:
            with suppress(pe.AMQPError, OSError):
                conn.close()

    def _prune_closed_channels(self) -> None:
        if self._send is not None and not self._send.is_open:
            self._send = None
        for queue in [q for q, qc in self._queues.items() if not qc.channel.is_open]:
            self._forget(self._queues.pop(queue))

    def _describe(self, exc: BaseException) -> str:
        return self.settings.redact(describe(exc, self.settings.password))


def wire(outgoing: Outgoing) -> Wire:
    """How `outgoing` is published: persistent; mandatory unless it is a broadcast."""
    headers = dict(outgoing.headers)
    if outgoing.broadcast:
        props = pika.BasicProperties(headers=headers, delivery_mode=2)
        return Wire(outgoing.exchange, "", outgoing.body, props, mandatory=False)
    exchange = outgoing.exchange
    if outgoing.delay:
        # As workflows: the x-delayed-message exchange holds it, then routes by queue name.
        headers["x-delay"] = int(1000 * outgoing.delay)
        exchange = DELAYED_EXCHANGE
    props = pika.BasicProperties(headers=headers, delivery_mode=2)
    return Wire(exchange, outgoing.queue, outgoing.body, props, mandatory=True)


def dead_copy(queue: str, body: bytes, headers: dict[str, Any], reason: str, origin: str) -> Wire:
    """The copy of a message that goes to `dlq.<queue>`: why, where it was bound, when."""
    headers = dict(headers)
    headers[REASON_HEADER] = reason[:MAX_REASON_CHARS]
    headers[ORIGIN_HEADER] = origin
    headers[DEAD_LETTERED_AT_HEADER] = datetime.now(UTC).isoformat(timespec="seconds")
    props = pika.BasicProperties(headers=headers, delivery_mode=2)
    return Wire("", f"dlq.{queue}", body, props, mandatory=True)


def undeliverable_copy(queue: str, outgoing: Outgoing, reason: str) -> Wire:
    """A send nobody can receive, for `dlq.<queue>`: its origin is where it was meant to go,
    so `zbatch dlq replay` delivers it there once that queue exists."""
    origin = outgoing.exchange if outgoing.broadcast else outgoing.queue
    return dead_copy(queue, outgoing.body, outgoing.headers, reason, origin)


def checked(w: Wire) -> Wire:
    """`w`, once its properties are known to encode (a bad header fails here, not halfway
    through a transaction of several messages)."""
    w.properties.encode()
    return w
