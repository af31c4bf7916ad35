"""Admin input: site profiles and RabbitMQ settings that are wrong, risky or hostile.

`zbatch profiles check` (and every command that loads a profile) refuses duplicate keys,
absurd nesting, template folders other users can write to, paths that are not normalised and
environment names that are not shell identifiers, each as one clear line; it warns about
`accept_unknown_hosts`. Broker settings never show the password in an error, in any spelling.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ZbatchRun, one_line_error, write_recipe
from zbatch.errors import ProfileError, TransportError
from zbatch.model.profiles import load_profile_file
from zbatch.transport.pika import PikaTransport
from zbatch.transport.rabbit_settings import RabbitSettings

BASE = "name: site\nscheduler: slurm\n"


def check(zbatch: ZbatchRun, tmp_path: Path, text: str) -> Any:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return zbatch("profiles", "check", str(path))


BROKEN = [
    # a second value must not silently win
    (BASE + "allow_commands: false\nallow_commands: true\n", "duplicate key 'allow_commands'"),
    (BASE + "connection: {type: ssh, host: a, host: b}\n", "duplicate key 'host'"),
    (BASE + "name: other\n", "duplicate key 'name'"),
    (BASE + "setup: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested too deeply"),
    (BASE + "setup: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "nested too deeply"),
    (BASE + "setup: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32 levels"),
    (BASE + "workdir_root: /dls/../x\n", "'/dls/../x' is not a normalised path"),
    (BASE + "workdir_root: /dls/\n", "write '/dls'"),
    (BASE + "workdir_root: //dls\n", "write '/dls'"),
    (BASE + "workdir_root: /dls/./x\n", "write '/dls/x'"),
    (BASE + "template_dir: /etc/zbatch/../templates\n", "is not a normalised path"),
    (BASE + "template_dir: relative/templates\n", "must be an absolute path"),
    (BASE + "job_broker_config: rabbit.ini\n", "must be an absolute path"),
    (BASE + "job_broker_config: /etc//rabbit.ini\n", "write '/etc/rabbit.ini'"),
    (BASE + 'workdir_root: "/dls\\nx"\n', "contains a line break"),
    (BASE + "environment: {1bad.name: x}\n", "variable name '1bad.name' is not allowed"),
    (BASE + "environment: {'A B': x}\n", "variable name 'A B' is not allowed"),
    (BASE + "environment: {PATH: /opt/bin}\n", "'PATH' is not allowed"),
    (BASE + "environment: {LD_PRELOAD: /x.so}\n", "'LD_PRELOAD' is not allowed"),
    (BASE + 'environment: {A: "x\\n#$ -l h_rt=1"}\n', "the value of A contains a line break"),
    (BASE + "allowed_environment: [A-B]\n", "variable name 'A-B' is not allowed"),
    (BASE + "wrappers: ['../x']\n", "wrappers.0: String should match pattern"),
    (BASE + '"odd\\nkey": 1\n', "'odd\\nkey': unknown key"),
    ("a: [\n", "not valid YAML"),
    (BASE + "x: !!python/object/apply:os.system [touch /tmp/zbatch-yaml-canary]\n", "not valid"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN, ids=lambda v: repr(v)[:60])
def test_profiles_check_refuses(
    text: str, expected: str, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    line = one_line_error(check(zbatch, tmp_path, text))
    assert str(tmp_path / "site.yaml") in line and expected in line, line


# Connections that cannot work: refused by `profiles check`, not at the first submission.
UNWORKABLE = [
    (BASE + "connection: {type: drmaa}\n", "connection.type: drmaa reaches SGE only"),
    (BASE + "connection: {type: ssh, user: gda2}\n", "connection.host: missing"),
    (BASE + "connection: {type: ssh, host: login}\n", "zbatch_command: missing"),
]


@pytest.mark.parametrize(
    ("text", "expected"), UNWORKABLE, ids=["slurm-drmaa", "ssh-no-host", "ssh-no-zbatch"]
)
def test_profiles_check_refuses_an_unworkable_connection(
    text: str, expected: str, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    done = check(zbatch, tmp_path, text)
    line = one_line_error(done)
    assert done.returncode == 2, done
    assert line.startswith(f"zbatch: error: {tmp_path / 'site.yaml'}: {expected}"), line


def test_a_merge_may_still_override(tmp_path: Path) -> None:
    """Only keys written twice are refused: overriding a merged (`<<`) key is what merges do."""
    path = tmp_path / "site.yaml"
    path.write_text(BASE + "limits: {<<: {max_cpus: 4, max_gpus: 1}, max_cpus: 8}\n")
    profile = load_profile_file(path)
    assert (profile.limits.max_cpus, profile.limits.max_gpus) == (8, 1)


def test_every_command_that_loads_a_profile_refuses_it(
    tmp_path: Path, work_root: Path, zbatch: ZbatchRun
) -> None:
    profile = tmp_path / "dup.yaml"
    profile.write_text(
        f"name: dup\nscheduler: local\nworkdir_root: {work_root}\n"
        "allow_commands: false\nallow_commands: true\n"
    )
    recipe = {
        "1": {
            "queue": "cluster.submission",
            "parameters": {"cluster": {"commands": ["true"]}, "workingdir": str(work_root / "a")},
        },
        "start": [[1, {}]],
    }
    path = write_recipe(tmp_path / "r.json", recipe)
    for args in (("render", "--recipe", str(path)), ("run", str(path))):
        line = one_line_error(zbatch(*args, "--profile", str(profile)))
        assert "duplicate key 'allow_commands'" in line
    with pytest.raises(ProfileError, match="duplicate key"):
        load_profile_file(profile)


def test_a_huge_profile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BASE + "description: " + "x" * 2_000_000 + "\n")
    with pytest.raises(ProfileError, match="larger than"):
        load_profile_file(path)


def template_profile(_tmp_path: Path, folder: Path) -> str:
    return BASE + f"template_dir: {folder}\n"


def test_world_writable_template_dir_is_refused(tmp_path: Path, zbatch: ZbatchRun) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    folder.chmod(0o777)
    line = one_line_error(check(zbatch, tmp_path, template_profile(tmp_path, folder)))
    assert f"{folder} is writable by every user" in line


def test_world_writable_template_file_is_refused(tmp_path: Path, zbatch: ZbatchRun) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "slurm.sh.j2").write_text("#!/bin/bash\n")
    (folder / "slurm.sh.j2").chmod(0o666)
    line = one_line_error(check(zbatch, tmp_path, template_profile(tmp_path, folder)))
    assert "slurm.sh.j2 is writable by every user" in line


def test_template_dir_under_an_open_folder_is_refused(tmp_path: Path, zbatch: ZbatchRun) -> None:
    """Anyone may rename a folder inside a world-writable one without the sticky bit."""
    open_folder = tmp_path / "open"
    (open_folder / "templates").mkdir(parents=True)
    open_folder.chmod(0o777)
    text = template_profile(tmp_path, open_folder / "templates")
    line = one_line_error(check(zbatch, tmp_path, text))
    assert f"{open_folder}, a folder above" in line and "without the sticky bit" in line


def test_template_dir_under_a_sticky_folder_is_accepted(tmp_path: Path, zbatch: ZbatchRun) -> None:
    sticky = tmp_path / "sticky"
    (sticky / "templates").mkdir(parents=True)
    sticky.chmod(0o1777)
    done = check(zbatch, tmp_path, template_profile(tmp_path, sticky / "templates"))
    assert done.returncode == 0, done.stderr


def test_template_dir_reached_through_a_link_into_an_open_folder_is_refused(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    open_folder = tmp_path / "open"
    (open_folder / "templates").mkdir(parents=True)
    open_folder.chmod(0o777)
    (tmp_path / "link").symlink_to(open_folder / "templates")
    line = one_line_error(check(zbatch, tmp_path, template_profile(tmp_path, tmp_path / "link")))
    assert "without the sticky bit" in line


def test_accept_unknown_hosts_is_a_warning(tmp_path: Path, zbatch: ZbatchRun) -> None:
    text = BASE + "connection: {type: ssh, host: login, accept_unknown_hosts: true}\n"
    text += "zbatch_command: [/opt/zbatch/bin/zbatch]\n"
    done = check(zbatch, tmp_path, text)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ")
    (warning,) = done.stderr.splitlines()
    assert warning.startswith("zbatch: warning: ") and "accept_unknown_hosts" in warning


def test_allowing_a_steering_variable_is_a_warning(tmp_path: Path, zbatch: ZbatchRun) -> None:
    done = check(zbatch, tmp_path, BASE + "allowed_environment: [PATH, OMP_NUM_THREADS]\n")
    assert done.returncode == 0, done.stderr
    (warning,) = done.stderr.splitlines()
    assert "lets messages set PATH," in warning


def test_shipped_profiles_check_clean(zbatch: ZbatchRun) -> None:
    done = zbatch("profiles", "check")
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr


def test_profile_settings_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "site",
                "scheduler": "slurm",
                "allowed_environment": ["PATH"],
                "environment": {"PATH": "/opt/bin:/usr/bin", "OMP_NUM_THREADS": "4"},
                "wrappers": ["xia2", "fast_ep"],
                "job_broker_config": "/etc/zbatch/rabbit.ini",
                "workdir_root": "~/runs",
            }
        )
    )
    profile = load_profile_file(path)
    assert profile.wrappers == ["xia2", "fast_ep"]
    assert profile.job_broker_config == "/etc/zbatch/rabbit.ini"
    assert profile.environment["PATH"] == "/opt/bin:/usr/bin"


# --- RabbitMQ settings -------------------------------------------------------------------

SECRET = "s3cr3t-Pa55-xyzzy"  # noqa: S105 (a test value)


def write_ini(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rabbit.ini"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://u:{SECRET}@[::1",
        f"amqp://u:{SECRET}@host:port/",
        f"amqp://u:{SECRET}@[zz]/",
        f"amqp://u:{SECRET}@host:99999/",
        f"amqp://u:{SECRET}@host:-1/",
        f"amqp://u:{SECRET}@host:²/",
    ],
)
def test_malformed_urls_are_clear_errors_without_the_password(url: str) -> None:
    with pytest.raises(TransportError) as caught:
        RabbitSettings.from_url(url)
    assert SECRET not in str(caught.value) and not caught.value.transient


def test_malformed_url_in_the_environment_is_one_line(zbatch: ZbatchRun) -> None:
    env = {"ZBATCH_RABBIT_URL": f"amqp://u:{SECRET}@[::1"}
    done = zbatch("broker", "setup", env=env)
    line = one_line_error(done)
    assert "malformed" in line and SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "body",
    [
        f"[rabbit]\npassword {SECRET}\n",
        f"password = {SECRET}\n[rabbit]\n",
        f"[rabbit]\nhost = h\n{SECRET}\n",
        f"[rabbit]\npassword = a\npassword = {SECRET}\n",
        f"[rabbit\npassword = {SECRET}\n",
        f"[rabbit]\nport = {SECRET}\n",
        f"[rabbit]\n{SECRET} = x\n",
    ],
)
def test_malformed_ini_never_shows_the_password(tmp_path: Path, body: str) -> None:
    with pytest.raises(TransportError) as caught:
        RabbitSettings.from_ini(write_ini(tmp_path, body))
    assert SECRET not in str(caught.value), caught.value
    assert str(tmp_path / "rabbit.ini") in str(caught.value)


def test_malformed_ini_through_the_cli(tmp_path: Path, zbatch: ZbatchRun) -> None:
    ini = write_ini(tmp_path, f"[rabbit]\nhost = h\npassword {SECRET}\n")
    done = zbatch("broker", "setup", "--rabbit-conf", str(ini))
    assert "line 3" in one_line_error(done) and SECRET not in done.stdout + done.stderr


ENCODED = "p%40ss%3Aw0rd-%2Fq"  # the password "p@ss:w0rd-/q", percent-encoded in a URL


def test_url_encoded_password_is_redacted_in_both_spellings() -> None:
    settings = RabbitSettings.from_url(f"amqp://zocalo:{ENCODED}@broker/")
    decoded = "p@ss:w0rd-/q"
    assert settings.password == decoded
    text = f"pika said {decoded} and {ENCODED} and {ENCODED.lower()} and p%40ss%3Aw0rd-/q"
    redacted = settings.redact(text)
    for form in (decoded, ENCODED, ENCODED.lower(), "p%40ss%3Aw0rd-/q", "p%40ss"):
        assert form not in redacted, redacted
    described = PikaTransport(settings)._describe(OSError(text))
    assert decoded not in described and "p%40ss" not in described
    for shown in (repr(settings), str(settings), repr(PikaTransport(settings))):
        assert "p@ss" not in shown and "p%40ss" not in shown


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_failed_connect_with_an_encoded_password_shows_neither_spelling(
    caplog: pytest.LogCaptureFixture, zbatch: ZbatchRun
) -> None:
    url = f"amqp://zocalo:{ENCODED}@127.0.0.1:{free_port()}/?connection_attempts=1"
    settings = RabbitSettings.from_url(url)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransportError) as caught:
        PikaTransport(settings).connect()
    for text in (str(caught.value), caplog.text):
        assert "p@ss" not in text and "p%40ss" not in text
    done = zbatch("-vv", "broker", "setup", env={"ZBATCH_RABBIT_URL": url})
    assert done.returncode != 0
    assert "p@ss" not in done.stdout + done.stderr and "p%40ss" not in done.stdout + done.stderr


@pytest.mark.rabbitmq
def test_refused_login_with_an_encoded_password_shows_neither_spelling(
    zbatch: ZbatchRun,
) -> None:
    url = f"amqp://guest:{ENCODED}@127.0.0.1:5672/?connection_attempts=1"
    done = zbatch("-vv", "broker", "setup", env={"ZBATCH_RABBIT_URL": url})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "p@ss" not in done.stdout + done.stderr and "p%40ss" not in done.stdout + done.stderr
