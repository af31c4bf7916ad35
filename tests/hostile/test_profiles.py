"""Admin input: site profiles and RabbitMQ settings that are wrong, risky or hostile.

`zbatch profiles check` (and every command that loads a profile) refuses duplicate keys,
absurd nesting, template folders other users can write to, paths that are not normalised and
environment names that are not shell identifiers, each as one clear line; it warns about
`accept_unknown_hosts`. Broker settings never show the password in an error, in any spelling.
"""

from __future__ import annotations

import logging
import re
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
    (BASE + "drmaa: {sge_cell: default}\n", "drmaa: only read by connection.type drmaa"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    UNWORKABLE,
    ids=["slurm-drmaa", "ssh-no-host", "ssh-no-zbatch", "drmaa-settings-unread"],
)
def test_profiles_check_refuses_an_unworkable_connection(
    text: str, expected: str, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    done = check(zbatch, tmp_path, text)
    line = one_line_error(done)
    assert done.returncode == 2, done
    assert line.startswith(f"zbatch: error: {tmp_path / 'site.yaml'}: {expected}"), line


# Defaults above limits: every step left to the default would fail, blaming the step.
ABOVE_LIMITS = [
    (
        "defaults: {cpus: 64}\nlimits: {max_cpus: 32}\n",
        "defaults.cpus: 64 is above limits.max_cpus (32)",
    ),
    (
        "defaults: {memory: 16G}\nlimits: {max_memory: 8G}\n",
        "defaults.memory: 16384 MB is above limits.max_memory (8192 MB)",
    ),
    (
        'defaults: {time_limit: "50:00:00"}\nlimits: {max_time_limit: "48:00:00"}\n',
        "defaults.time_limit: 50:00:00 is above limits.max_time_limit (48:00:00)",
    ),
    (
        "defaults: {gpus: 2}\nlimits: {max_gpus: 1}\n",
        "defaults.gpus: 2 is above limits.max_gpus (1)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ABOVE_LIMITS, ids=["cpus", "memory", "time", "gpus"])
def test_defaults_above_limits_are_refused(
    text: str, expected: str, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    line = one_line_error(check(zbatch, tmp_path, BASE + text))
    assert line.startswith(f"zbatch: error: {tmp_path / 'site.yaml'}: {expected}"), line
    key = expected.split(":")[0]
    assert f"lower {key} or raise limits.max_" in line, line


def test_defaults_above_limits_are_refused_wherever_the_profile_is_loaded(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    profile = tmp_path / "site.yaml"
    profile.write_text(
        "name: site\nscheduler: local\ndefaults: {cpus: 64}\nlimits: {max_cpus: 32}\n"
    )
    recipe = {"1": {"parameters": {"wrapper": "xia2"}}, "start": [[1, {}]]}
    path = write_recipe(tmp_path / "r.json", recipe)
    line = one_line_error(zbatch("render", "--recipe", str(path), "--profile", str(profile)))
    assert "defaults.cpus: 64 is above limits.max_cpus (32)" in line, line


RENAMED = [
    ("defaults: {memory_mb: 16G}\n", "defaults.memory_mb: renamed; write defaults.memory"),
    (
        'defaults: {time_limit_s: "2:00:00"}\n',
        "defaults.time_limit_s: renamed; write defaults.time_limit",
    ),
    ("limits: {max_memory_mb: 256G}\n", "limits.max_memory_mb: renamed; write limits.max_memory"),
    (
        "limits: {max_time_limit_s: 3600}\n",
        "limits.max_time_limit_s: renamed; write limits.max_time_limit",
    ),
]


@pytest.mark.parametrize(("text", "expected"), RENAMED, ids=lambda v: repr(v)[:30])
def test_old_key_names_are_refused_with_the_new_one(
    text: str, expected: str, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    line = one_line_error(check(zbatch, tmp_path, BASE + text))
    assert line.startswith(f"zbatch: error: {tmp_path / 'site.yaml'}: {expected}"), line


def test_new_key_names_take_units(tmp_path: Path, zbatch: ZbatchRun) -> None:
    text = BASE + 'defaults: {memory: 16G, time_limit: "2:00:00"}\n'
    text += 'limits: {max_memory: 256G, max_time_limit: "48:00:00"}\n'
    done = check(zbatch, tmp_path, text)
    assert done.returncode == 0, done.stderr
    profile = load_profile_file(tmp_path / "site.yaml")
    assert (profile.defaults.memory, profile.defaults.time_limit) == (16384, 7200)
    assert (profile.limits.max_memory, profile.limits.max_time_limit) == (262144, 172800)


def test_yaml_error_gives_line_and_column(tmp_path: Path, zbatch: ZbatchRun) -> None:
    line = one_line_error(check(zbatch, tmp_path, BASE + "defaults:\n  cpus: 2\n   gpus: 1\n"))
    assert f"{tmp_path / 'site.yaml'}: not valid YAML: line 5, column 8: " in line, line


SSH_SITE = BASE + "zbatch_command: [/opt/zbatch/bin/zbatch]\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SSH_SITE + "connection: {type: ssh, host: login, key_file: /nonexistent/id_ed25519}\n",
            "connection.key_file: /nonexistent/id_ed25519 does not exist on this machine",
        ),
        (
            SSH_SITE + "connection: {type: ssh, host: login, known_hosts: /nonexistent/kh}\n",
            "connection.known_hosts: /nonexistent/kh does not exist on this machine",
        ),
        (
            BASE + "template_dir: /nonexistent/templates\n",
            "template_dir: /nonexistent/templates is not a folder",
        ),
        (
            "name: site\nscheduler: sge\nconnection: {type: drmaa}\n"
            "drmaa: {library_path: /nonexistent/libdrmaa.so}\n",
            "drmaa.library_path: /nonexistent/libdrmaa.so does not exist on this machine",
        ),
    ],
    ids=["key_file", "known_hosts", "template_dir", "drmaa-library"],
)
def test_missing_files_are_refused_by_check(
    text: str, expected: str, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    line = one_line_error(check(zbatch, tmp_path, text))
    assert line.startswith(f"zbatch: error: {tmp_path / 'site.yaml'}: {expected}"), line


def test_missing_files_are_a_warning_when_listed(tmp_path: Path, zbatch: ZbatchRun) -> None:
    (tmp_path / "site.yaml").write_text(
        SSH_SITE + "connection: {type: ssh, host: login, key_file: /nonexistent/id}\n"
    )
    done = zbatch("profiles", "list", env={"ZBATCH_CONFIG_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    (warning,) = done.stderr.splitlines()
    assert warning.startswith(f"zbatch: warning: {tmp_path / 'site.yaml'}: connection.key_file")
    assert "site " in done.stdout and "slurm via ssh" in done.stdout


def test_a_missing_template_dir_never_falls_back_to_the_shipped_templates(
    tmp_path: Path, work_root: Path, zbatch: ZbatchRun
) -> None:
    profile = tmp_path / "site.yaml"
    profile.write_text(
        f"name: site\nscheduler: local\nworkdir_root: {work_root}\n"
        "template_dir: /nonexistent/templates\n"
    )
    recipe = {
        "1": {"parameters": {"wrapper": "xia2", "workingdir": str(work_root / "a")}},
        "start": [[1, {}]],
    }
    path = write_recipe(tmp_path / "r.json", recipe)
    line = one_line_error(zbatch("render", "--recipe", str(path), "--profile", str(profile)))
    assert "template_dir /nonexistent/templates is not a folder" in line, line


def test_profiles_are_found_by_name_and_by_file_name_yaml_or_yml(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    (tmp_path / "beamline-cluster.yml").write_text("name: i04\nscheduler: local\n")
    env = {"ZBATCH_CONFIG_DIR": str(tmp_path)}
    for name in ("i04", "beamline-cluster"):
        done = zbatch("profiles", "check", name, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"ok: {name} (i04: local via local)"), done.stdout
    listed = zbatch("profiles", "list", env=env)
    assert f"i04 {' ' * 16} local via local    {tmp_path / 'beamline-cluster.yml'}" in listed.stdout


def test_two_files_claiming_one_name_are_an_error_naming_both(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    (tmp_path / "a.yaml").write_text("name: i04\nscheduler: local\n")
    (tmp_path / "i04.yml").write_text("name: i04\nscheduler: slurm\n")
    env = {"ZBATCH_CONFIG_DIR": str(tmp_path)}
    line = one_line_error(zbatch("profiles", "check", "i04", env=env))
    both = f"{tmp_path / 'a.yaml'} and {tmp_path / 'i04.yml'}"
    assert f"profile 'i04' is claimed by {both}" in line, line
    done = zbatch("profiles", "check", env=env)
    assert done.returncode == 2 and f"'i04' is claimed by {both}" in done.stderr, done.stderr


# The snippet README.md showed before templates had blocks: copied literally, its script has
# no output, error or working directory, no marker and no resources.
OLD_README_TEMPLATE = """#!/bin/bash
#SBATCH --job-name={{ job.name | directive("job.name") }}
#SBATCH --reservation=beamtime
{% include "_body.sh.j2" %}
"""
EXTENDING_TEMPLATE = """{% extends "slurm.sh.j2" %}
{% block directives %}
#SBATCH --reservation=beamtime
{% endblock %}
{% block setup %}
{{ super() -}}
module load global/cluster
{% endblock %}
"""


def site_with_template(tmp_path: Path, template: str) -> str:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "slurm.sh.j2").write_text(template)
    return template_profile(tmp_path, folder)


def test_a_site_template_dropping_required_parts_is_refused(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    line = one_line_error(
        check(zbatch, tmp_path, site_with_template(tmp_path, OLD_README_TEMPLATE))
    )
    assert (
        f"template_dir {tmp_path / 'templates'}: slurm.sh.j2 leaves out '#SBATCH --output=" in line
    )
    assert "and 7 more required lines" in line and '{% extends "slurm.sh.j2" %}' in line, line


def test_a_site_template_extending_the_shipped_one_passes(
    tmp_path: Path, zbatch: ZbatchRun
) -> None:
    done = check(zbatch, tmp_path, site_with_template(tmp_path, EXTENDING_TEMPLATE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ")


def test_the_readme_template_example_extends_and_passes(tmp_path: Path, zbatch: ZbatchRun) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"```jinja\n(\{% extends \"slurm.sh.j2\" %\}\n.*?)```", readme, re.S)
    assert match, "README.md lost its template example"
    done = check(zbatch, tmp_path, site_with_template(tmp_path, match.group(1)))
    assert done.returncode == 0, done.stderr


def test_a_site_template_that_does_not_render_is_refused(tmp_path: Path, zbatch: ZbatchRun) -> None:
    text = site_with_template(tmp_path, '{% extends "slurm.sh.j2" %}\n{% block setup %}\n')
    line = one_line_error(check(zbatch, tmp_path, text))
    assert f"does not render: template {tmp_path / 'templates' / 'slurm.sh.j2'} line 2" in line


def test_a_site_template_including_itself_is_one_line(tmp_path: Path, zbatch: ZbatchRun) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "slurm.sh.j2").write_text('{% include "_loop.sh.j2" %}\n')
    (folder / "_loop.sh.j2").write_text('{% include "slurm.sh.j2" %}\n')
    line = one_line_error(check(zbatch, tmp_path, template_profile(tmp_path, folder)))
    assert "includes or extends itself without end" in line, line


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


# The loopback profiles name the sshd service's key and known_hosts, sge-drmaa SGE's files.
@pytest.mark.ssh
@pytest.mark.sge
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
