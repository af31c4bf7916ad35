"""Site profiles: the shipped ones are valid; broken ones name file, key and fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zbatch.errors import ProfileError
from zbatch.model.profiles import (
    ambiguous_names,
    find_profiles,
    load_profile,
    load_profile_file,
    missing_paths,
)

SHIPPED = Path(__file__).resolve().parents[3] / "site-configs"


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_profiles_are_valid(path: Path) -> None:
    profile = load_profile_file(path)
    assert profile.name == path.stem


def test_required_examples_are_shipped() -> None:
    names = set(find_profiles())
    assert {"local", "slurm-local", "slurm-over-ssh", "sge-local", "sge-drmaa"} <= names


def test_config_dir_overrides_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "local.yaml").write_text("name: local\nscheduler: local\nlocal: {slots: 7}\n")
    monkeypatch.setenv("ZBATCH_CONFIG_DIR", str(tmp_path))
    assert load_profile("local").local.slots == 7


def test_units_are_parsed() -> None:
    profile = load_profile("slurm-local")
    assert profile.limits.max_memory == 4096
    assert profile.defaults.time_limit == 1800


BROKEN = [
    ("name: x\nscheduler: pbs\n", "scheduler: Input should be 'local', 'slurm' or 'sge'"),
    ("name: x\nscheduler: slurm\nfoo: 1\n", "foo: unknown key; allowed here: name, description"),
    (
        "name: x\nscheduler: slurm\nconnection: {type: ssh, prot: 22}\n",
        "connection.prot: unknown key; allowed here: type, host, port",
    ),
    (
        "name: x\nscheduler: slurm\ndefaults: {cpus: many}\n",
        "defaults.cpus: Input should be a valid integer",
    ),
    ("name: x\nscheduler: slurm\ndefaults: {time_limit: soon}\n", "is not a duration"),
    ("name: x\nscheduler: slurm\nworkdir_root: relative/dir\n", "must be an absolute path"),
    ("name: 'bad name'\nscheduler: slurm\n", "name: String should match pattern"),
    ('name: x\nscheduler: slurm\nsetup: ["a\\nb"]\n', "spans several lines"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("name: x\n  scheduler: [\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN)
def test_broken_profiles_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"known profiles: .*slurm-local"):
        load_profile("nonexistent")


SSH = "connection: {type: ssh, host: login.example.org}\n"
# An SSH profile with all it needs: the login node, and where zbatch lives on it.
WHOLE_SSH = "name: x\nscheduler: slurm\n" + SSH + "zbatch_command: [/opt/zbatch/bin/zbatch]\n"
CONNECTIONS_BROKEN = [
    (
        "name: x\nscheduler: slurm\nconnection: {type: drmaa}\n",
        "connection.type: drmaa reaches SGE only (SGE's libdrmaa), not slurm: "
        "set scheduler: sge, or connection.type: local or ssh",
    ),
    (
        "name: x\nscheduler: local\nconnection: {type: drmaa}\n",
        "connection.type: drmaa reaches SGE only (SGE's libdrmaa), not local",
    ),
    (
        "name: x\nscheduler: slurm\nconnection: {type: ssh, user: gda2}\n",
        "connection.host: missing: connection.type ssh needs the login node to reach; "
        "add connection.host: <its name>",
    ),
    (
        "name: x\nscheduler: sge\nconnection: {type: ssh, host: ''}\n",
        "connection.host: missing",
    ),
    (
        "name: x\nscheduler: slurm\n" + SSH,
        "zbatch_command: missing: jobs on login.example.org run zbatch there, not this "
        "machine's; add zbatch_command: [<path of zbatch on login.example.org>], or "
        "connection.shares_installation: true if it runs this installation",
    ),
    (
        # A loopback host is no exception: only the profile can say what runs there.
        "name: x\nscheduler: sge\nconnection: {type: ssh, host: localhost}\n",
        "zbatch_command: missing",
    ),
    ("name: x\nscheduler: slurm\n" + SSH + "zbatch_command: []\n", "zbatch_command: missing"),
]


@pytest.mark.parametrize(
    ("text", "message"),
    CONNECTIONS_BROKEN,
    ids=[
        "slurm-drmaa",
        "local-drmaa",
        "ssh-no-host",
        "ssh-empty-host",
        "ssh-no-zbatch",
        "ssh-loopback-no-zbatch",
        "ssh-empty-zbatch",
    ],
)
def test_connections_that_cannot_work_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    assert str(caught.value).startswith(f"{path}: "), caught.value
    assert message in str(caught.value), caught.value
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        WHOLE_SSH,
        "name: x\nscheduler: sge\nconnection: {type: drmaa}\n",
        "name: x\nscheduler: slurm\nconnection: {type: local}\n",
        # The host runs this installation (shared file system, or this machine): no path needed.
        "name: x\nscheduler: slurm\n"
        "connection: {type: ssh, host: 127.0.0.1, port: 2222, shares_installation: true}\n",
    ],
    ids=["ssh", "sge-drmaa", "local", "shares-installation"],
)
def test_connections_that_can_work_load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    load_profile_file(path)


def test_drmaa_never_becomes_another_scheduler() -> None:
    """What the refusal protects: a DRMAA backend is SGE's whatever the profile says."""
    profile = load_profile("sge-drmaa")
    assert (profile.scheduler, profile.connection.type) == ("sge", "drmaa")


def test_the_readme_example_profile_loads(tmp_path: Path) -> None:
    """The profile README.md shows site admins is one zbatch accepts as written."""
    readme = (SHIPPED.parent / "README.md").read_text()
    match = re.search(r"```yaml\n(name: my-cluster\n.*?)```", readme, re.S)
    assert match, "README.md lost its example profile"
    path = tmp_path / "my-cluster.yaml"
    path.write_text(match.group(1))
    profile = load_profile_file(path)
    assert (profile.name, profile.connection.type) == ("my-cluster", "ssh")


LIMITS_BROKEN = [
    ("defaults: {cpus: 64}\nlimits: {max_cpus: 32}\n", "defaults.cpus: 64 is above"),
    ("defaults: {memory: 16G}\nlimits: {max_memory: 8G}\n", "defaults.memory: 16384 MB"),
    ("defaults: {time_limit: 7200}\nlimits: {max_time_limit: 3600}\n", "2:00:00 is above"),
    ("defaults: {gpus: 2}\nlimits: {max_gpus: 0}\n", "defaults.gpus: 2 is above"),
    ("defaults: {memory_mb: 512}\n", "defaults.memory_mb: renamed; write defaults.memory"),
    ("limits: {max_time_limit_s: 60}\n", "limits.max_time_limit_s: renamed; write"),
]


@pytest.mark.parametrize(("text", "message"), LIMITS_BROKEN)
def test_defaults_above_limits_and_old_keys_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("name: x\nscheduler: slurm\n" + text)
    with pytest.raises(ProfileError) as caught:
        load_profile_file(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_defaults_equal_to_limits_load(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        "name: x\nscheduler: slurm\ndefaults: {cpus: 4, memory: 4G, time_limit: 60, gpus: 1}\n"
        "limits: {max_cpus: 4, max_memory: 4096, max_time_limit: '0:01:00', max_gpus: 1}\n"
    )
    assert load_profile_file(path).defaults.memory == 4096


def test_found_by_name_and_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cluster-a.yml").write_text("name: i04\nscheduler: local\n")
    monkeypatch.setenv("ZBATCH_CONFIG_DIR", str(tmp_path))
    assert load_profile("i04").source == load_profile("cluster-a").source
    assert find_profiles()["i04"] == tmp_path / "cluster-a.yml"
    assert "cluster-a" not in find_profiles()


def test_one_name_claimed_twice_names_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x.yaml").write_text("name: i04\nscheduler: local\n")
    (tmp_path / "i04.yaml").write_text("name: other\nscheduler: local\n")
    monkeypatch.setenv("ZBATCH_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ProfileError, match=r"claimed by .*i04\.yaml and .*x\.yaml"):
        load_profile("i04")
    assert load_profile("other").name == "other"
    assert set(ambiguous_names()) == {"i04"}


def test_missing_files_are_listed_not_refused_on_load(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        "name: x\nscheduler: slurm\nzbatch_command: [z]\ntemplate_dir: /nonexistent/t\n"
        "connection: {type: ssh, host: h, key_file: /nonexistent/k, known_hosts: ~/nonexistent}\n"
    )
    problems = missing_paths(load_profile_file(path))
    assert [p.split(": ")[1] for p in problems] == [
        "connection.key_file",
        "connection.known_hosts",
        "template_dir",
    ]
