"""RabbitMQ through pika's BlockingConnection, on the wire exactly like workflows' PikaTransport.

NOT thread-safe: a BlockingConnection belongs to the thread that uses it, so make one
PikaTransport per thread (the heartbeat thread builds its own through a factory).

Deliberate differences from workflows:
- Publisher confirms are on: publish() returns once the broker holds the message, and a
  mandatory publish nobody can route, or a broker nack, raises instead of vanishing.
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
from zbatch.transport.base import ORIGIN_HEADER, REASON_HEADER, Delivery, Transport
from zbatch.transport.rabbit_settings import RabbitSettings
from zbatch.transport.rabbit_wire import (
    DELIVERY_COUNT_HEADER,
    PikaDelivery,
    QueueChannel,
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


class PikaTransport(Transport):
    """One connection: a confirmed send channel plus one channel per queue received from.

    The first `receive(queue)` starts a consumer that stays until `disconnect()`; up to
    `settings.prefetch` of its messages may wait unacked in this process meanwhile.
    """

    def __init__(self, settings: RabbitSettings | None = None) -> None:
        self.settings = settings or RabbitSettings()
        self._conn: Any = None
        self._send: Any = None
        self._queues: dict[str, QueueChannel] = {}
        self._generation = 0
        self._ever_connected = False

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
        """Close; the broker requeues whatever this connection left unacked."""
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
        headers = dict(headers)
        if delay:
            # As workflows: the x-delayed-message exchange holds it, then routes by queue name.
            headers["x-delay"] = int(1000 * delay)
            exchange = DELAYED_EXCHANGE
        self._publish(exchange, queue, body, headers, mandatory=True)

    def broadcast(
        self, exchange: str, body: bytes, headers: dict[str, Any], expiration_s: float | None = None
    ) -> None:
        expiration = None if expiration_s is None else str(int(expiration_s * 1000))
        self._publish(exchange, "", body, dict(headers), mandatory=False, expiration=expiration)

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        mandatory: bool,
        expiration: str | None = None,
    ) -> None:
        props = pika.BasicProperties(headers=headers, delivery_mode=2, expiration=expiration)
        via = f"exchange {exchange!r}" if exchange else "the default exchange"
        with self._guard(f"publish to {routing_key!r} via {via}"):
            if self._send is None or not self._send.is_open:
                self._send = self._conn.channel()
                self._send.confirm_delivery()
            self._send.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)

    # -- consuming ----------------------------------------------------------------------------

    def set_prefetch(self, count: int) -> None:
        """Raise the prefetch for consumers opened from now on (never lowers the setting)."""
        if count > self.settings.prefetch:
            self.settings = dataclasses.replace(self.settings, prefetch=count)

    def receive(self, queue: str, timeout: float) -> PikaDelivery | None:
        deadline = time.monotonic() + max(timeout, 0.0)
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
            return qc.buffer.popleft() if qc.buffer else None

    def get(self, queue: str) -> PikaDelivery | None:
        """One message without consuming (basic_get); ack, nack or dead-letter it as usual."""
        with self._guard(f"get from {queue!r}"):
            qc = self._queue_channel(queue)
            method, props, body = qc.channel.basic_get(queue, auto_ack=False)
            return None if method is None else make_delivery(qc, queue, method, props, body)

    def ack(self, delivery: Delivery) -> None:
        with self._guard(f"ack of message {delivery.tag} from {delivery.queue!r}"):
            self._owning_channel(delivery).basic_ack(delivery.tag)

    def nack(self, delivery: Delivery, requeue: bool = True) -> None:
        if not requeue:
            # As the embedded twin: a rejected message lands in the DLQ with a reason.
            self.dead_letter(delivery, "rejected without requeue")
            return
        with self._guard(f"nack of message {delivery.tag} from {delivery.queue!r}"):
            self._owning_channel(delivery).basic_nack(delivery.tag, requeue=True)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Copy to `dlq.<queue>` (confirmed), then ack: a crash in between duplicates, never loses.

        The copy keeps the original headers and adds the reason, origin queue and time.
        """
        with self._guard(f"dead-lettering message {delivery.tag} from {delivery.queue!r}"):
            self._owning_channel(delivery)  # refuse a stale delivery before copying it
        headers = {k: v for k, v in delivery.headers.items() if k != DELIVERY_COUNT_HEADER}
        headers[REASON_HEADER] = reason[:MAX_REASON_CHARS]
        headers[ORIGIN_HEADER] = delivery.queue
        headers[DEAD_LETTERED_AT_HEADER] = datetime.now(UTC).isoformat(timespec="seconds")
        self._publish("", f"dlq.{delivery.queue}", delivery.body, headers, mandatory=True)
        self.ack(delivery)

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
        channel = self._conn.channel()
        # Consumers never declare queues (workflows doesn't): a passive declare only checks
        # that it exists, and a 404 closes this fresh channel alone.
        channel.queue_declare(queue, passive=True)
        channel.basic_qos(prefetch_count=self.settings.prefetch)
        channel.add_on_cancel_callback(lambda _frame: self._on_cancel(queue))
        self._generation += 1
        qc = self._queues[queue] = QueueChannel(channel, self._generation)
        return qc

    def _on_message(
        self, qc: QueueChannel, queue: str, _ch: Any, method: Any, props: Any, body: bytes
    ) -> None:
        qc.buffer.append(make_delivery(qc, queue, method, props, body))

    def _on_cancel(self, queue: str) -> None:
        # The broker cancelled our consumer (queue deleted): the next receive re-checks it.
        qc = self._queues.get(queue)
        if qc is not None:
            qc.consumer_tag = None

    def _owning_channel(self, delivery: Delivery) -> Any:
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
        return qc.channel

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
        self._queues.clear()  # their deliveries are now stale; the broker requeues them
        if conn is not None and conn.is_open:
            with suppress(pe.AMQPError, OSError):
                conn.close()

    def _prune_closed_channels(self) -> None:
        if self._send is not None and not self._send.is_open:
            self._send = None
        for queue in [q for q, qc in self._queues.items() if not qc.channel.is_open]:
            del self._queues[queue]

    def _describe(self, exc: BaseException) -> str:
        return self.settings.redact(describe(exc, self.settings.password))
