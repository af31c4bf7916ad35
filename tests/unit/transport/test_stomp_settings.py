"""ActiveMQ settings from a zocalo `[stomp]` INI (`--stomp-conf`), a URL or the environment,
and zocalo.wrap's `--stomp-*` options on `zbatch wrap`."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from zbatch.cli.wrap import stomp_settings, wrap
from zbatch.errors import TransportError
from zbatch.transport.factory import TransportConfig, make_transport
from zbatch.transport.stomp import StompTransport
from zbatch.transport.stomp_settings import StompSettings

SECRET = "st0mp-Pa55word"  # noqa: S105 (a test value)


def write_ini(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "stomp.ini"
    path.write_text(body)
    return path


def test_zocalo_ini_as_workflows_reads_it(tmp_path: Path) -> None:
    path = write_ini(
        tmp_path,
        f"[stomp]\nhost = amq.example.org\nport = 61614\nusername = zocalo\n"
        f"password = {SECRET}\nprefix = zocalo\n",
    )
    s = StompSettings.from_ini(path)
    assert (s.host, s.port, s.username, s.password, s.prefix) == (
        "amq.example.org",
        61614,
        "zocalo",
        SECRET,
        "zocalo",
    )
    assert s.namespace == "zocalo."  # workflows adds the dot
    assert StompSettings(prefix="zocalo.").namespace == "zocalo."
    assert StompSettings().namespace == ""


def test_ini_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    path = write_ini(tmp_path, f"[stomp]\nusername = z\npassword_file = {secret}\n")
    assert StompSettings.from_ini(path).password == SECRET


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[rabbit]\nhost = x\n", "no [stomp] section"),
        ("[stomp]\nhost = x\nvhost = y\n", "unknown [stomp] keys vhost"),
        ("[stomp]\nport = many\n", "port must be a number"),
        ("[stomp]\nport = 70000\n", "out of range"),
        ("[stomp]\nhost = a,b\n", "exactly one host"),
        ("[stomp\nhost = x\n", "cannot read STOMP settings"),
        ("[stomp]\npassword_file = /nonexistent/secret\n", "cannot read the STOMP password"),
    ],
)
def test_ini_errors_are_permanent_and_say_why(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(TransportError, match=re.escape(expected)) as err:
        StompSettings.from_ini(write_ini(tmp_path, body))
    assert not err.value.transient


def test_url_and_its_errors_never_quote_the_password() -> None:
    s = StompSettings.from_url(f"stomp://zocalo:{SECRET}@amq:61615?prefix=zocalo")
    assert (s.host, s.port, s.username, s.password, s.prefix) == (
        "amq",
        61615,
        "zocalo",
        SECRET,
        "zocalo",
    )
    for bad, expected in [
        (f"amqp://u:{SECRET}@h/", "only stomp://"),
        (f"stomp://u:{SECRET}@h:99999", "malformed"),
        (f"stomp://u:{SECRET}@h?vhost=x", "unknown STOMP URL options vhost"),
    ]:
        with pytest.raises(TransportError, match=expected) as err:
            StompSettings.from_url(bad)
        assert SECRET not in str(err.value)


def test_environment_url_or_conf_not_both(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, "[stomp]\nhost = from-ini\n")
    assert StompSettings.from_env({"ZBATCH_STOMP_CONF": str(ini)}).host == "from-ini"
    assert StompSettings.from_env({"ZBATCH_STOMP_URL": "stomp://h2"}).host == "h2"
    assert StompSettings.from_env({}) == StompSettings()
    with pytest.raises(TransportError, match="not both"):
        StompSettings.from_env({"ZBATCH_STOMP_CONF": str(ini), "ZBATCH_STOMP_URL": "stomp://h"})


def test_password_never_shown() -> None:
    s = StompSettings(username="u", password=SECRET)
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert s.redact(f"login {SECRET} refused") == "login *** refused"


def test_factory_builds_a_stomp_transport(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, "[stomp]\nhost = amq\nprefix = zocalo\n")
    transport = make_transport(TransportConfig("stomp", stomp_conf=str(ini)))
    assert isinstance(transport, StompTransport) and transport.settings.host == "amq"
    given = StompSettings(host="given")
    transport = make_transport(TransportConfig("stomp", stomp=given))
    assert isinstance(transport, StompTransport) and transport.settings is given


def test_zocalo_wraps_options_override_the_file(tmp_path: Path) -> None:
    ini = write_ini(tmp_path, f"[stomp]\nhost = from-ini\nusername = u\npassword = {SECRET}\n")
    assert stomp_settings(str(ini), {}) is None  # the transport reads the file itself
    s = stomp_settings(str(ini), {"host": "h", "port": 61620, "prefix": "zoc"})
    assert s is not None
    assert (s.host, s.port, s.username, s.password, s.prefix) == ("h", 61620, "u", SECRET, "zoc")


def test_zbatch_wrap_takes_zocalo_wraps_stomp_options_without_showing_them(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    shown = runner.invoke(wrap, ["--help"]).output
    assert "--stomp-conf" in shown and "--stomp-host" not in shown and "--stomp-pass" not in shown
    # A job script written for zocalo.wrap: every option is taken (the wrapper file is
    # missing, so it stops there, after the options were read).
    argv = [
        "--wrap",
        "generic",
        "--recipewrapper",
        str(tmp_path / "missing.recipewrap"),
        "-t",
        "StompTransport",
        "--stomp-host",
        "127.0.0.1",
        "--stomp-port",
        "61613",
        "--stomp-user",
        "u",
        "--stomp-pass",
        SECRET,
        "--stomp-prfx",
        "zocalo",
    ]
    result = runner.invoke(wrap, argv)
    assert "no such option" not in result.output.lower()
    assert SECRET not in result.output
    refused = runner.invoke(wrap, [*argv[:4], "--stomp-port", "0"])
    assert refused.exit_code == 2 and "--stomp-port" in refused.output


def test_an_unreachable_broker_is_a_transient_error_naming_it() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = StompTransport(StompSettings(host="127.0.0.1", port=port, password=SECRET))
    with pytest.raises(TransportError) as err:
        transport.connect()
    assert err.value.transient and f"127.0.0.1:{port}" in str(err.value)
    assert SECRET not in str(err.value)
