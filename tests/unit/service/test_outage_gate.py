"""The outage gate: one probe at a time, backoff, budget, and handing steps back on stop."""

from __future__ import annotations

import threading

import pytest

from zbatch.errors import ClusterUnavailable, ConnectionFailure, SchedulerError
from zbatch.service.outage import (
    FIRST_PROBE_S,
    MAX_PROBE_S,
    HandedBack,
    OutageGate,
    is_unavailability,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_what_counts_as_unavailability() -> None:
    assert is_unavailability(ClusterUnavailable("slurmctld down"))
    assert is_unavailability(ConnectionFailure("ssh refused"))
    assert not is_unavailability(ConnectionFailure("no sbatch here", transient=False))
    assert not is_unavailability(SchedulerError("invalid partition"))
    assert not is_unavailability(SchedulerError("status query failed", transient=True))


def test_outage_closes_the_gate_and_one_probe_at_a_time_reopens_it() -> None:
    clock, changes = Clock(), list[bool]()
    gate = OutageGate("slurm", 60, on_change=changes.append, clock=clock)
    stop = threading.Event()
    gate.take_turn(stop)  # up: at once
    gate.failed(ClusterUnavailable("down"))
    assert not gate.accepting and changes == [False]
    clock.now += FIRST_PROBE_S
    gate.take_turn(stop)  # this worker probes
    probing = threading.Thread(target=gate.take_turn, args=(stop,), daemon=True)
    probing.start()
    probing.join(0.3)
    assert probing.is_alive(), "a second worker probed while the first was probing"
    gate.succeeded()
    probing.join(2)
    assert not probing.is_alive() and gate.accepting and changes == [False, True]


def test_failed_probes_back_off_to_a_cap() -> None:
    clock = Clock()
    gate = OutageGate("sge", 3600, clock=clock)
    stop = threading.Event()
    gate.failed(ClusterUnavailable("down"))
    waits = []
    for _ in range(10):
        waits.append(gate.next_probe_in())
        clock.now += waits[-1]
        gate.take_turn(stop)  # due now: returns at once
        gate.failed(ClusterUnavailable("still down"))
    assert waits[0] == FIRST_PROBE_S
    assert waits == sorted(waits) and waits[1] == 2 * FIRST_PROBE_S
    assert waits[-1] == MAX_PROBE_S


def test_workers_already_calling_do_not_push_the_probe_back() -> None:
    clock = Clock()
    gate = OutageGate("slurm", 60, clock=clock)
    for _ in range(8):  # eight workers' calls all fail as the outage begins
        gate.failed(ClusterUnavailable("down"))
    assert gate.next_probe_in() == FIRST_PROBE_S  # not 2**8 times it


def test_budget_counts_from_when_the_step_first_waited() -> None:
    clock = Clock()
    gate = OutageGate("slurm", 30, clock=clock)
    since = clock.now
    clock.now += 29
    assert not gate.over_budget(since)
    clock.now += 1
    assert gate.over_budget(since)


def test_stopping_during_an_outage_hands_the_step_back() -> None:
    gate = OutageGate("slurm", 60, clock=Clock())
    gate.failed(ClusterUnavailable("down"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(HandedBack):
        gate.take_turn(stop)
