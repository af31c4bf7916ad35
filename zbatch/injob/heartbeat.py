"""Status heartbeats to the `transient.status` fanout exchange, as zocalo's wrappers send them."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zbatch import __version__
from zbatch.transport.base import STATUS_EXCHANGE, Transport

log = logging.getLogger(__name__)

INTERVAL_S = 3.0
EXPIRATION_S = 15.0
# workflows' status codes and texts (workflows.services.common_service.Status)
STARTING, PROCESSING, END, ERROR = 1, 4, 6, 7
STATUS_TEXT = {STARTING: "starting", PROCESSING: "processing", END: "shutdown", ERROR: "error"}
# The workflows release whose wire format zbatch speaks: the `workflows` field where the
# package itself is not installed (zbatch does not need it to run).
WORKFLOWS_COMPATIBLE = "3.3"


def host_id() -> str:
    """workflows.util.generate_unique_host_id: reversed hostname, then the process id."""
    return ".".join(reversed(socket.gethostname().split("."))) + f".{os.getpid()}"


def workflows_version() -> str:
    """What workflows.version() says where workflows is installed; else the release zbatch
    is compatible with."""
    try:
        return importlib.metadata.version("workflows")
    except importlib.metadata.PackageNotFoundError:
        return WORKFLOWS_COMPATIBLE


def cluster_info() -> dict[str, str]:
    """zocalo.util.extended_status_dictionary's cluster fields (SGE: `cluster_JOB_ID`,
    `cluster_SGE_CELL`, the cell as the job's spool config names it), plus Slurm's job id
    as `cluster_job_id`."""
    info = {}
    if os.environ.get("SLURM_JOB_ID"):
        info["cluster_job_id"] = os.environ["SLURM_JOB_ID"]
    if os.environ.get("JOB_ID"):
        info["cluster_JOB_ID"] = os.environ["JOB_ID"]
        if os.environ.get("SGE_CELL"):
            info["cluster_SGE_CELL"] = os.environ["SGE_CELL"]
        spool = os.environ.get("SGE_JOB_SPOOL_DIR")
        if spool:
            with contextlib.suppress(OSError, UnicodeError), open(Path(spool) / "config") as fh:
                for line in fh.read(65536).split("\n"):  # SGE's own few lines
                    if line.upper().startswith("SGE_CELL="):
                        info["cluster_SGE_CELL"] = line[9:]
                        break
    return info


def task_name(wrapper: str, step: dict[str, Any] | None = None) -> str:
    """zocalo.wrap's task: the wrapper's name, then the step's
    `wrapper.task_information` in parentheses when it has one."""
    extra = step.get("wrapper") if step else None
    info = extra.get("task_information") if isinstance(extra, dict) else None
    return f"{wrapper} ({info})" if info else wrapper


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
        self._static = {"workflows": workflows_version(), "zbatch": __version__, **cluster_info()}

    def message(self) -> dict[str, Any]:
        """zocalo.wrap's StatusNotifications fields and formats (`zbatch` where it has
        `zocalo`); `task` is set by the caller (`task_name`)."""
        return {
            "host": self._host,
            "task": self.task,
            **self._static,
            "status": self.status,
            "statustext": STATUS_TEXT.get(self.status, ""),
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
