"""Messages a job must send, kept on disk until the transport has taken them.

Each message is added to a JSON-lines file, rewritten whole under a new name and renamed
over the old one (`atomic_write`: never half-written), before any send is tried; a flush
sends them in order, retrying with backoff, and removes the file once all are sent.
If the broker stays down the file remains: the tracker records its channels in the ledger as
owed when the job ends, and a dispatcher sends them later (zbatch/service/owed.py), keeping
its own progress in the ledger, never in this file: results are delayed, never dropped.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from zbatch.errors import ParameterError, RecipeError, TransportError
from zbatch.model import safejson
from zbatch.model.jobs import atomic_write
from zbatch.model.message import WRAPPER_DEFAULT_CHANNEL, StepMessage
from zbatch.transport.base import Transport

log = logging.getLogger(__name__)
SEND_RETRY_ENV = "ZBATCH_SEND_RETRY_S"
DEFAULT_SEND_RETRY_S = 600.0
_SECONDS = re.compile(r"[0-9]{1,7}(?:\.[0-9]{0,6})?")
# An outbox holds one job's messages; a file bigger than this was not written by zbatch.
MAX_OUTBOX_BYTES = 4 * safejson.MAX_MESSAGE_BYTES


def retry_window_s() -> float:
    """$ZBATCH_SEND_RETRY_S: how long `zbatch wrap` retries the broker before it leaves its
    messages in the outbox for a dispatcher (default 600 s). A value that is not a number of
    seconds is an error, checked when `zbatch wrap` starts, never a silent default."""
    value = os.environ.get(SEND_RETRY_ENV, "").strip()
    if not value:
        return DEFAULT_SEND_RETRY_S
    if not _SECONDS.fullmatch(value):
        raise ParameterError(
            f"${SEND_RETRY_ENV}={value[:40]!r} is not a number of seconds (e.g. 600)"
        )
    return float(value)


class Outbox:
    def __init__(
        self, path: Path, message: StepMessage, make_transport: Callable[[], Transport]
    ) -> None:
        self.path = path
        self.message = message
        self.make_transport = make_transport
        self.pending: list[tuple[str, Any]] = []
        self.sent = 0

    @classmethod
    def from_text(cls, path: Path, text: str, make_transport: Callable[[], Transport]) -> Outbox:
        """An outbox as `_save` wrote it; RecipeError for anything else (a job may write it)."""
        if len(text) > MAX_OUTBOX_BYTES:
            raise RecipeError(f"outbox {path}: over the {MAX_OUTBOX_BYTES}-byte limit")
        lines = [
            safejson.loads(line, f"outbox {path} line {number}")
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
        if not lines or not isinstance(lines[0], dict) or "message" not in lines[0]:
            raise RecipeError(f"outbox {path}: the first line must hold the step message")
        box = cls(path, StepMessage.from_body(lines[0]["message"], str(path)), make_transport)
        for number, entry in enumerate(lines[1:], 2):
            channel = entry.get("channel") if isinstance(entry, dict) else None
            if not isinstance(channel, str) or not 0 < len(channel) <= 256:
                raise RecipeError(f"outbox {path} line {number}: not a channel and payload")
            box.pending.append((channel, entry.get("payload")))
        return box

    def sends(self) -> list[tuple[int, StepMessage]]:
        """Every send the pending messages make, in order: one per destination of each
        message's channel, with the index of the message it belongs to (what
        `send_onward` would publish, split so that progress is kept send by send). Like
        zocalo.wrap, no default channel is set: unnamed outputs receive none of these."""
        return [
            (index, self.message.onward(target, payload))
            for index, (channel, payload) in enumerate(self.pending)
            for target in self.message.destinations(
                channel, default_channel=WRAPPER_DEFAULT_CHANNEL
            )
        ]

    def channels_after(self, sent: int) -> tuple[str, ...]:
        """The channels of the pending messages not wholly sent once `sent` sends are done."""
        sends = self.sends()
        first = sends[sent][0] if sent < len(sends) else len(self.pending)
        return tuple(channel for channel, _ in self.pending[first:])

    def add(self, channel: str, payload: Any) -> None:
        self.pending.append((channel, payload))
        self._save()

    def _save(self) -> None:
        lines = [json.dumps({"message": self.message.to_body()})]
        lines += [json.dumps({"channel": c, "payload": p}, default=str) for c, p in self.pending]
        atomic_write(self.path, "\n".join(lines) + "\n")

    def flush(self, window_s: float | None = None) -> bool:
        """Send everything pending, retrying for `window_s`; True when nothing is left."""
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type((TransportError, OSError)),
                stop=stop_after_delay(retry_window_s() if window_s is None else window_s),
                wait=wait_exponential(multiplier=0.5, max=30),
            ):
                with attempt:
                    self._send_all()
        except RetryError as exc:
            log.error(
                "results kept in %s: transport unavailable (%s)",
                self.path,
                exc.last_attempt.exception(),
            )
            return False
        return True

    def _send_all(self) -> None:
        transport = self.make_transport()
        try:
            transport.connect()
            self.send_via(transport, save=True)
        finally:
            transport.disconnect()
        self.path.unlink(missing_ok=True)

    def send_via(self, transport: Transport, save: bool = False) -> None:
        """Send what is pending in order; with `save`, keep the file in step after each."""
        while self.pending:
            channel, payload = self.pending[0]
            transport.send_onward(
                self.message, channel, payload, default_channel=WRAPPER_DEFAULT_CHANNEL
            )
            self.pending.pop(0)
            self.sent += 1
            if save:
                self._save()
