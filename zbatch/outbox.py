"""Messages a job must send, kept on disk until the transport has taken them.

Each message is appended (and fsynced) to a JSON-lines file before any send is tried; a
flush sends them in order, retrying with backoff, and removes the file once all are sent.
If the broker stays down the file remains, and `zbatch wrap --resend FILE` or the dispatcher
sends it later: results are delayed, never dropped.
"""

from __future__ import annotations

import json
import logging
import os
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

from zbatch.envelope import StepMessage
from zbatch.errors import TransportError
from zbatch.jobs import atomic_write
from zbatch.transport.base import Transport

log = logging.getLogger(__name__)


def retry_window_s() -> float:
    value = os.environ.get("ZBATCH_SEND_RETRY_S", "")
    return float(value) if value.replace(".", "", 1).isdigit() else 600.0


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
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        box = cls(path, StepMessage.from_body(lines[0]["message"], str(path)), make_transport)
        box.pending = [(entry["channel"], entry["payload"]) for entry in lines[1:]]
        return box

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
            transport.send_onward(self.message, channel, payload)
            self.pending.pop(0)
            self.sent += 1
            if save:
                self._save()
