"""The pika-facing details of the RabbitMQ transport: deliveries, connection parameters, errors.

Kept apart from `pika.py` so the transport reads as policy (when to reconnect, what to refuse)
while this module holds how pika's frames and exceptions map onto zbatch's types.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions as pe

from zbatch.transport.base import Delivery, Settlement
from zbatch.transport.rabbit_settings import RabbitSettings

DELIVERY_COUNT_HEADER = "x-delivery-count"  # set by quorum queues on redelivery
# Reply codes that a retry cannot fix: access refused, not found, locked, precondition
# failed, command invalid, not allowed.
PERMANENT_CODES = {403, 404, 405, 406, 503, 530}


@dataclass
class PikaDelivery(Delivery):
    generation: int = 0  # which channel incarnation delivered it (tags are per channel)
    delivery_mode: int | None = None
    exchange: str = ""
    routing_key: str = ""


@dataclass
class QueueChannel:
    """The channel that consumes (or gets from) one queue, and what it has buffered.

    The channel is in transaction mode: acks, nacks and the publishes that go with them take
    effect together at `tx_commit`. `returned` collects the mandatory publishes the broker
    gave back as unroutable (it sends them before `tx.commit-ok`).
    """

    channel: Any
    generation: int
    buffer: deque[PikaDelivery] = field(default_factory=deque)
    consumer_tag: str | None = None
    returned: list[Returned] = field(default_factory=list)
    held: set[int] = field(default_factory=set)  # tags handed out, not settled yet
    staged: list[Pending] = field(default_factory=list)  # settled, awaiting the commit


@dataclass
class Pending:
    """One delivery's part of a transaction: what to publish, then ack (or requeue) it."""

    delivery: PikaDelivery
    wires: list[Wire] = field(default_factory=list)
    requeue: bool = False  # nack and requeue instead of ack
    settlement: Settlement | None = None
    then: Callable[[Settlement], None] | None = None


@dataclass(frozen=True)
class Returned:
    """A mandatory publish the broker could not route (basic.return)."""

    exchange: str
    routing_key: str
    body: bytes
    reply_text: str


@dataclass(frozen=True)
class Wire:
    """One publish as it goes on the wire (after a delay became the delayed exchange)."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Any
    mandatory: bool


def make_delivery(
    qc: QueueChannel, queue: str, method: Any, props: Any, body: bytes
) -> PikaDelivery:
    headers = dict(props.headers or {})
    # A quorum queue counts earlier deliveries; a classic one only says "redelivered".
    previous = headers.get(DELIVERY_COUNT_HEADER)
    redelivered = bool(method.redelivered)
    count = previous + 1 if isinstance(previous, int) else 2 if redelivered else 1
    return PikaDelivery(
        tag=method.delivery_tag,
        queue=queue,
        body=body,
        headers=headers,
        redelivered=redelivered,
        delivery_count=count,
        generation=qc.generation,
        delivery_mode=props.delivery_mode,
        exchange=method.exchange,
        routing_key=method.routing_key,
    )


def connection_parameters(settings: RabbitSettings, attempts: int) -> Any:
    s = settings
    return pika.ConnectionParameters(
        host=s.host,
        port=s.port,
        virtual_host=s.vhost,
        credentials=pika.PlainCredentials(s.user, s.password),
        heartbeat=s.heartbeat_s,
        blocked_connection_timeout=s.blocked_connection_timeout_s,
        connection_attempts=attempts,
        retry_delay=s.retry_delay_s,
        socket_timeout=s.socket_timeout_s,
        client_properties={"connection_name": "zbatch"},
    )


def is_transient(exc: BaseException) -> bool:
    permanent = (
        pe.AuthenticationError,
        pe.ProbableAuthenticationError,
        pe.ProbableAccessDeniedError,
        pe.UnroutableError,
        pe.ProtocolSyntaxError,
        pe.UnsupportedAMQPFieldException,  # a header value AMQP cannot carry
        pe.ShortStringTooLong,  # a name over 255 bytes
    )
    if isinstance(exc, permanent):
        return False
    return getattr(exc, "reply_code", None) not in PERMANENT_CODES


def describe(exc: BaseException, password: str) -> str:
    if isinstance(exc, pe.UnroutableError):
        return "the broker could not route it: is the queue declared? (setup_broker)"
    if isinstance(exc, pe.NackError):
        return "the broker refused it (negative publisher confirm)"
    detail = str(exc) or ", ".join(repr(arg) for arg in exc.args) or "no detail"
    text = f"{type(exc).__name__}: {detail}"
    # pika's messages carry no credentials today; make sure they never do.
    return text.replace(password, "***") if password else text
