"""Status heartbeats to the `transient.status` fanout exchange, as zocalo's wrappers send them."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from zbatch import __version__
from zbatch.transport.base import STATUS_EXCHANGE, Transport

log = logging.getLogger(__name__)

INTERVAL_S = 3.0
EXPIRATION_S = 15.0
# workflows' status codes
STARTING, PROCESSING, END, ERROR = 1, 4, 6, 7
STATUS_TEXT = {STARTING: "starting", PROCESSING: "processing", END: "shutdown", ERROR: "error"}


def host_id() -> str:
    """workflows' host naming: reversed hostname, then the process id."""
    return ".".join(reversed(socket.getfqdn().split("."))) + f".{os.getpid()}"


def cluster_info() -> dict[str, str]:
    info = {}
    for var, key in (
        ("SLURM_JOB_ID", "cluster_job_id"),
        ("JOB_ID", "cluster_JOB_ID"),
        ("SGE_CELL", "cluster_SGE_CELL"),
    ):
        if os.environ.get(var):
            info[key] = os.environ[var]
    return info


class Heartbeat:
    """Sends a status every INTERVAL_S seconds and on each change, from its own thread."""

    def __init__(self, make_transport: Callable[[], Transport], task: str) -> None:
        self.make_transport = make_transport
        self.task = task
        self.status = STARTING
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zbatch-heartbeat", daemon=True)
        self._host = host_id()

    def message(self) -> dict[str, Any]:
        return {
            "host": self._host,
            "task": f"{self.task} (zbatch wrap)",
            "zbatch": __version__,
            "workflows": "zbatch",
            "status": self.status,
            "statustext": STATUS_TEXT.get(self.status, ""),
            **cluster_info(),
        }

    def start(self) -> None:
        self._thread.start()

    def set(self, status: int) -> None:
        self.status = status
        self._changed.set()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        # A heartbeat that cannot be sent is not worth failing the job for: log and go on.
        transport: Transport | None = None
        while True:
            try:
                transport = transport or self.make_transport()
                transport.broadcast(
                    STATUS_EXCHANGE,
                    json.dumps(self.message()).encode(),
                    {},
                    expiration_s=EXPIRATION_S,
                )
            except Exception as exc:  # noqa: BLE001 - a heartbeat never stops the job
                log.warning("status heartbeat not sent: %s", exc)
                transport = None
            if self._stop.is_set():
                break
            self._changed.wait(INTERVAL_S)
            self._changed.clear()
        if transport is not None:
            transport.disconnect()
