"""Backpressure while a cluster cannot be reached: hold what is in hand, probe, resume.

A controller restart (slurmctld, sge_qmaster), a login node that refuses SSH or a command
that times out says nothing about the step: it is unavailability, not a refusal. While the
cluster is down the dispatcher takes no new messages, its workers keep the steps they hold,
and one of them at a time probes the cluster by retrying its own submission, with backoff.
A step is dead-lettered only once it has waited the profile's outage budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from zbatch.errors import ClaimBusy, ClusterUnavailable, ConnectionFailure, ZbatchError

log = logging.getLogger(__name__)

FIRST_PROBE_S = 1.0
MAX_PROBE_S = 30.0


def is_unavailability(exc: BaseException) -> bool:
    """The cluster did not answer, as opposed to answering no."""
    return isinstance(exc, ClusterUnavailable) or (
        isinstance(exc, ConnectionFailure) and exc.transient
    )


class HandedBack(ClaimBusy):
    """The dispatcher is stopping during an outage: the step goes back to its queue."""


class OutageGate:
    """Shared by a dispatcher's workers: is the cluster up, and whose turn is it to probe?"""

    def __init__(
        self,
        cluster: str,
        budget_s: float,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.budget_s = budget_s
        self.on_change = on_change
        self.clock = clock
        self.down_since: float | None = None
        self.last_error = ""
        self._probing = False
        self._next_probe = 0.0
        self._delay = FIRST_PROBE_S
        self._changed = threading.Condition()

    @property
    def accepting(self) -> bool:
        """New steps may be taken (the cluster answered last time it was asked)."""
        return self.down_since is None

    def next_probe_in(self) -> float:
        """Seconds until the next probe is due (0 while the cluster is up)."""
        return 0.0 if self.down_since is None else max(0.0, self._next_probe - self.clock())

    def outage_s(self) -> float:
        return 0.0 if self.down_since is None else self.clock() - self.down_since

    def take_turn(self, stopping: threading.Event) -> None:
        """Return when this worker may call the cluster: at once while it is up; during an
        outage, when the next probe is due and nobody else is probing. Raises HandedBack if
        the dispatcher is asked to stop meanwhile."""
        with self._changed:
            while True:
                if stopping.is_set() and self.down_since is not None:
                    raise HandedBack(
                        f"stopping while cluster {self.cluster} is unavailable: step requeued",
                        transient=True,
                    )
                if self.down_since is None:
                    return
                wait = self._next_probe - self.clock()
                if not self._probing and wait <= 0:
                    self._probing = True
                    return
                self._changed.wait(timeout=min(max(wait, 0.05), 1.0))

    def succeeded(self) -> None:
        """The cluster answered (a submission went through, or it refused on its merits)."""
        with self._changed:
            self._probing = False
            if self.down_since is None:
                return
            log.warning(
                "cluster %s answers again after %.0f s: taking new steps", self.cluster,
                self.outage_s(),
            )  # fmt: skip
            self.down_since = None
            self._delay = FIRST_PROBE_S
            self._changed.notify_all()
        if self.on_change:
            self.on_change(True)

    def failed(self, exc: ZbatchError) -> None:
        """The cluster did not answer: enter (or stay in) the outage, next probe later."""
        first = False
        with self._changed:
            probed, self._probing = self._probing, False
            self.last_error = str(exc)
            if self.down_since is None:
                self.down_since = self.clock()
                self._delay = FIRST_PROBE_S
                first = True
            if first or probed:
                # Workers that were already calling when the outage began do not each push
                # the schedule back: only the start of an outage and a failed probe do.
                self._next_probe = self.clock() + self._delay
                self._delay = min(MAX_PROBE_S, self._delay * 2)
            self._changed.notify_all()
        if first:
            log.warning(
                "cluster %s unavailable: %s; holding the steps in hand, taking no new ones, "
                "probing with backoff (outage budget %g s)", self.cluster, exc, self.budget_s,
            )  # fmt: skip
            if self.on_change:
                self.on_change(False)

    def over_budget(self, waiting_since: float) -> bool:
        """Has a step that first met the outage at `waiting_since` waited long enough?"""
        return self.clock() - waiting_since >= self.budget_s
