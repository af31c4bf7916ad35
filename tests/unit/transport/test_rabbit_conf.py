"""RabbitMQ settings from a zocalo INI (`--rabbit-conf`), a URL or the environment."""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path

import pytest

from zbatch.errors import TransportError
from zbatch.transport.factory import TransportConfig, make_transport
from zbatch.transport.pika import PikaTransport
from zbatch.transport.rabbit_settings import RabbitSettings

SECRET = "s3cr3t-Pa55word"  # noqa: S105 (a test value)


def write_ini(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rabbit.ini"
    path.write_text(body)
    return path


def test_defaults_match_workflows() -> None:
    s = RabbitSettings()
    assert (s.host, s.port, s.user, s.vhost) == ("localhost", 5672, "guest", "/")
    assert s.password == "guest"  # noqa: S105 (RabbitMQ's default account)
    assert s.prefetch == 1


def test_zocalo_ini(tmp_path: Path) -> None:
    path = write_ini(
        tmp_path,
        f"[rabbit]\nhost = rmq.example.org\nport = 5673\nusername = zocalo\n"
        f"password = {SECRET}\nvhost = zocdev\n",
    )
    s = RabbitSettings.from_ini(path)
    assert (s.host, s.port, s.user, s.password, s.vhost) == (
        "rmq.example.org",
        5673,
        "zocalo",
        SECRET,
        "zocdev",
    )


def test_ini_partial_keeps_defaults_and_tunables(tmp_path: Path) -> None:
    s = RabbitSettings.from_ini(write_ini(tmp_path, "[rabbit]\nhost = h\nprefetch = 4\n"))
    assert (s.host, s.port, s.user, s.prefetch) == ("h", 5672, "guest", 4)


def test_ini_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    s = RabbitSettings.from_ini(write_ini(tmp_path, f"[rabbit]\npassword_file = {secret}\n"))
    assert s.password == SECRET


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[other]\nhost = h\n", "no [rabbit] section"),
        ("[rabbit]\nhots = h\n", "unknown [rabbit] keys hots; allowed: host"),
        ("[rabbit]\nport = five\n", "port must be a number"),
        ("[rabbit]\nport = 0\n", "port 0 is out of range"),
        ("[rabbit]\nhost = a,b\n", "exactly one host"),
        ("[rabbit]\npassword_file = /nonexistent/secret\n", "cannot read the RabbitMQ password"),
        ("not an ini", "cannot read RabbitMQ settings"),
    ],
)
def test_ini_errors_are_permanent_and_say_why(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(TransportError) as err:
        RabbitSettings.from_ini(write_ini(tmp_path, body))
    assert expected in str(err.value) and not err.value.transient


def test_missing_ini_file(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="cannot read RabbitMQ settings"):
        RabbitSettings.from_ini(tmp_path / "absent.ini")


def test_url() -> None:
    s = RabbitSettings.from_url(f"amqp://zo%40calo:{SECRET}@broker:5673/zoc%2Fdev?prefetch=3")
    assert (s.host, s.port, s.user, s.password, s.vhost, s.prefetch) == (
        "broker",
        5673,
        "zo@calo",
        SECRET,
        "zoc/dev",
        3,
    )


@pytest.mark.parametrize("url", ["amqp://broker", "amqp://broker/", "amqp://broker/%2F"])
def test_url_default_vhost(url: str) -> None:
    s = RabbitSettings.from_url(url)
    assert (s.host, s.port, s.vhost, s.user) == ("broker", 5672, "/", "guest")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqps://broker", "only amqp:// URLs"),
        ("amqp://broker:port", "port is not a number"),
        ("amqp://broker?frame_max=5", "unknown URL options frame_max"),
    ],
)
def test_url_errors(url: str, expected: str) -> None:
    with pytest.raises(TransportError, match=expected):
        RabbitSettings.from_url(url)


def test_env_url_conf_and_defaults(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, "[rabbit]\nhost = from-ini\n")
    assert RabbitSettings.from_env({"ZBATCH_RABBIT_URL": "amqp://from-url"}).host == "from-url"
    assert RabbitSettings.from_env({"ZBATCH_RABBIT_CONF": str(ini)}).host == "from-ini"
    assert RabbitSettings.from_env({}) == RabbitSettings()
    with pytest.raises(TransportError, match="not both"):
        RabbitSettings.from_env({"ZBATCH_RABBIT_URL": "amqp://x", "ZBATCH_RABBIT_CONF": str(ini)})


def test_env_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    env = {"ZBATCH_RABBIT_URL": "amqp://u@h", "ZBATCH_RABBIT_PASSWORD_FILE": str(secret)}
    s = RabbitSettings.from_env(env)
    assert (s.user, s.password) == ("u", SECRET)


def test_from_conf_path_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ini = write_ini(tmp_path, "[rabbit]\nhost = conf-host\n")
    assert PikaTransport.from_conf(str(ini)).settings.host == "conf-host"
    monkeypatch.setenv("ZBATCH_RABBIT_URL", "amqp://env-host")
    assert PikaTransport.from_conf(None).settings.host == "env-host"
    transport = make_transport(TransportConfig("pika", rabbit_conf=str(ini)))
    assert isinstance(transport, PikaTransport) and transport.settings.host == "conf-host"


def test_password_never_shown() -> None:
    s = RabbitSettings.from_url(f"amqp://zocalo:{SECRET}@broker/zocdev")
    for text in (repr(s), str(s), repr(PikaTransport(s)), str(PikaTransport(s))):
        assert SECRET not in text
    assert str(s) == "amqp://zocalo@broker:5672/zocdev"


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RabbitSettings().host = "elsewhere"  # type: ignore[misc]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_failed_connect_names_the_broker_but_not_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = RabbitSettings(
        host="127.0.0.1", port=free_port(), vhost="zocdev", password=SECRET, connection_attempts=1
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransportError) as err:
        PikaTransport(settings).connect()
    assert f"127.0.0.1:{settings.port}/zocdev" in str(err.value)
    assert err.value.transient  # a broker that is down may come back
    assert SECRET not in str(err.value) and SECRET not in caplog.text
