"""Shared fixtures: an isolated zbatch state, profiles written per test, and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ZbatchRun


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own ledger, queue and local batch state."""
    state = tmp_path / "state"
    monkeypatch.setenv("ZBATCH_STATE_DIR", str(state))
    monkeypatch.setenv("ZBATCH_SEND_RETRY_S", "5")
    return state


@pytest.fixture()
def work_root(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture()
def make_profile(tmp_path: Path) -> Any:
    """Write a profile YAML (local scheduler unless overridden) and return its path."""

    def write(name: str = "test-local", **fields: Any) -> Path:
        data: dict[str, Any] = {
            "name": name,
            "scheduler": "local",
            "workdir_root": str(tmp_path / "work"),
            "local": {"slots": 2, "state_dir": str(tmp_path / "localbatch")},
            "allow_commands": True,
        }
        data.update(fields)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        (tmp_path / "work").mkdir(exist_ok=True)
        return path

    return write


@pytest.fixture()
def zbatch() -> Iterator[ZbatchRun]:
    """Run the real `zbatch` command in a subprocess, as a user would."""

    def run(
        *args: str,
        timeout: float = 120,
        input_text: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zbatch", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            env={**os.environ, **(env or {})},
            check=False,
        )

    yield run


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite tests/golden files.")


SERVICE_MARKERS = {
    "slurm": "slurm",
    "sge": "sge",
    "drmaa": "sge",
    "ssh": "sshd",
    "rabbitmq": "rabbitmq",
    "activemq": "activemq",
}
# Written by scripts/services/up activemq: a zocalo-style [stomp] section (host, port,
# username, password, prefix) for the broker on 127.0.0.1:61613.
STOMP_INI = Path("/var/lib/zbatch-services/stomp.ini")
SERVICES_STATUS = Path(__file__).resolve().parents[1] / "scripts" / "services" / "status"
_service_up: dict[str, bool] = {}


def service_is_up(service: str) -> bool:
    if service not in _service_up:
        probe = subprocess.run([str(SERVICES_STATUS), service], capture_output=True, check=False)
        _service_up[service] = probe.returncode == 0
    return _service_up[service]


@pytest.fixture(autouse=True)
def required_services(request: pytest.FixtureRequest) -> None:
    """A service test whose service is down FAILS: CI must never skip real-service tests."""
    for marker, service in SERVICE_MARKERS.items():
        if request.node.get_closest_marker(marker) and not service_is_up(service):
            pytest.fail(f"{service} is not running: start it with scripts/services/up {service}")


@pytest.fixture()
def stomp_ini() -> Path:
    """Path of the ActiveMQ STOMP settings file (tests using it are marked activemq)."""
    return STOMP_INI
