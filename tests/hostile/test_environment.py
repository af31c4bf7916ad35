"""Environment: what a message may set in a job, and what a job may see of the dispatcher.

Names from a message are shell identifiers outside a deny list of loader and interpreter
variables (unless the profile allows one by name); values are one line of text. A running job
(on the local scheduler and on the real Slurm) holds neither the broker password nor
ZBATCH_RABBIT_URL in any process's environment or command line, in its script or in its
staged files, and still delivers its results through the credentials file its profile names.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.faults.support import JOBS_ROOT, Dispatcher, wait_until
from tests.helpers import ZbatchRun, one_line_error, write_recipe
from zbatch.model.jobenv import scrubbed_environment
from zbatch.model.message import start_messages
from zbatch.model.recipe import Recipe
from zbatch.transport import factory
from zbatch.transport.admin import setup_broker
from zbatch.transport.factory import TransportConfig, job_transport_args
from zbatch.transport.pika import PikaTransport
from zbatch.transport.rabbit_settings import RabbitSettings


def env_recipe(workdir: Path, environment: dict[str, Any]) -> dict[str, Any]:
    return {
        "1": {
            "queue": "cluster.submission",
            "parameters": {
                "wrapper": "xia2",
                "workingdir": str(workdir),
                "cluster": {"time_limit": "0:05:00", "environment": environment},
            },
            "job_parameters": {"xia2": {"images": "/data/x_0001.cbf:1:10"}},
        },
        "start": [[1, {}]],
    }


def render(zbatch: ZbatchRun, profile: Path, recipe: dict[str, Any], tmp_path: Path) -> Any:
    path = write_recipe(tmp_path / "recipe.json", recipe)
    return zbatch("render", "--profile", str(profile), "--recipe", str(path))


HOSTILE_NAMES = [
    "X\n",
    "PATH",
    "LD_PRELOAD",
    "PYTHONPATH",
    "BASH_ENV",
    "1bad",
    "A B",
    "ZBATCH_CPUS",
    "path",  # the deny list ignores case
    "zbatch_exit_record",  # the exit trap's own variable: would redirect the exit record
    "LD_AUDIT",
    "PYTHONSTARTUP",
    "BASH_FUNC_mv%%",
    "ENV",
    "IFS",
    "PS4",
    "SHELLOPTS",
    "PERL5LIB",
    "SLURM_CPUS_PER_TASK",
    "NSLOTS",
    "EXECIGNORE",
    "GIT_CONFIG_GLOBAL",
    "",
    "A=B",
    "$(touch x)",
    "É",
    "X" * 200,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_environment_names_are_refused(
    name: str, make_profile: Any, work_root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    recipe = env_recipe(work_root / "w", {name: "value"})
    line = one_line_error(render(zbatch, make_profile(), recipe, tmp_path))
    assert "environment variable name" in line, line


@pytest.mark.parametrize(
    "value",
    [
        "x\n#$ -l h_rt=999:00:00",
        "x\n",
        "a\rb",
        "\x1b[31mred",
        "\u2028",
        "\ud800",
        "x\x00y",
        ["a", "b"],
        {"a": 1},
        None,
        True,
    ],
    ids=repr,
)
def test_hostile_environment_values_are_refused(
    value: object, make_profile: Any, work_root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    recipe = env_recipe(work_root / "w", {"GREETING": value})
    line = one_line_error(render(zbatch, make_profile(), recipe, tmp_path))
    assert "GREETING" in line, line


def test_plain_values_stay_quoted_on_one_line(
    make_profile: Any, work_root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    env = {"GREETING": "it's a $HOME `test`; #$ -l h_rt=1", "OMP_NUM_THREADS": 4}
    done = render(zbatch, make_profile(), env_recipe(work_root / "w", env), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "export GREETING='it'\"'\"'s a $HOME `test`; #$ -l h_rt=1'\n" in done.stdout
    assert "export OMP_NUM_THREADS=4\n" in done.stdout


def test_a_profile_may_allow_a_denied_name_by_name(
    make_profile: Any, work_root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    profile = make_profile(allowed_environment=["PATH"])
    done = render(zbatch, profile, env_recipe(work_root / "w", {"PATH": "/opt/x/bin"}), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "export PATH=/opt/x/bin\n" in done.stdout
    # Only the names it lists: the rest of the deny list still holds.
    refused = render(zbatch, profile, env_recipe(work_root / "w", {"LD_PRELOAD": "/x"}), tmp_path)
    assert "'LD_PRELOAD' is not allowed" in one_line_error(refused)


def test_the_job_script_calls_no_command_through_path(
    make_profile: Any, work_root: Path, tmp_path: Path, zbatch: ZbatchRun
) -> None:
    """The exit trap uses builtins and `command -p` only: a PATH full of impostors (the site's
    own setup may change PATH) does not decide what records the job's outcome."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    canary = tmp_path / "impostor-ran"
    for tool in ("date", "mv", "cat", "printf", "kill", "rm"):
        (fake / tool).write_text(f"#!/bin/sh\ntouch {canary}\nexit 1\n")
        (fake / tool).chmod(0o755)
    profile = make_profile(setup=[f"export PATH={fake}:$PATH"])
    recipe = {
        "1": {
            "queue": "cluster.submission",
            "parameters": {
                "cluster": {"commands": ["exit 3"], "time_limit": "0:05:00"},
                "workingdir": str(work_root / "trap"),
            },
        },
        "start": [[1, {}]],
    }
    result = zbatch(
        "run", str(write_recipe(tmp_path / "r.json", recipe)), "--profile", str(profile)
    )
    assert "step 1 failed (exit code 3)" in result.stdout, result.stdout + result.stderr
    (record,) = (work_root / "trap").glob("*.exit")
    data = json.loads(record.read_text())
    assert data["exit_code"] == 3 and abs(data["end_time"] - time.time()) < 300
    assert not canary.exists()


# --- no secret reaches a job --------------------------------------------------------------


@dataclass
class BrokerAccount:
    """A RabbitMQ user of its own, on a vhost of its own that the default guest cannot use:
    a job that delivers there can only have used the credentials file its profile names."""

    user: str
    password: str
    vhost: str

    @property
    def url(self) -> str:
        pw, vhost = quote(self.password, safe=""), quote(self.vhost, safe="")
        return f"amqp://{self.user}:{pw}@127.0.0.1:5672/{vhost}"

    @property
    def secrets(self) -> list[bytes]:
        """Every spelling of the password a leak could take, and the URL's variable name."""
        forms = {self.password, quote(self.password, safe=""), quote(self.password)}
        return [f.encode() for f in forms] + [b"ZBATCH_RABBIT_URL"]

    def settings(self) -> RabbitSettings:
        return RabbitSettings(
            host="127.0.0.1", user=self.user, password=self.password, vhost=self.vhost
        )

    def write_ini(self, folder: Path) -> Path:
        """A zocalo `[rabbit]` INI whose password sits in a file beside it (mode 0600)."""
        folder.mkdir(parents=True, exist_ok=True)
        secret = folder / "rabbit.password"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        ini = folder / "rabbit.ini"
        ini.write_text(
            f"[rabbit]\nhost = 127.0.0.1\nport = 5672\nusername = {self.user}\n"
            f"vhost = {self.vhost}\npassword_file = {secret}\n"
        )
        ini.chmod(0o600)
        return ini


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"rabbitmqctl {args[0]}: {done.stdout}{done.stderr}"


@pytest.fixture()
def account() -> Iterator[BrokerAccount]:
    tag = secrets.token_hex(4)
    # '@', '%' and ':' must be percent-encoded in a URL: both spellings are looked for.
    found = BrokerAccount(f"zbatch-env-{tag}", f"pw@{secrets.token_hex(10)}%:x", f"env-{tag}")
    rabbitmqctl("add_vhost", found.vhost)
    rabbitmqctl("add_user", found.user, found.password)
    try:
        rabbitmqctl("set_permissions", "-p", found.vhost, found.user, ".*", ".*", ".*")
        yield found
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", found.vhost], check=False, timeout=120)
        subprocess.run(["rabbitmqctl", "-q", "delete_user", found.user], check=False, timeout=120)


# Run as the job's tool: record this process and every ancestor (environment, command line).
PROBE = """\
import json, os, sys
seen, pid = [], os.getpid()
while pid > 1:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
    except OSError:
        break
    seen.append({"pid": pid, "environ": environ.hex(), "cmdline": cmdline.hex()})
    pid = ppid
with open(sys.argv[1], "w") as f:
    json.dump(seen, f)
"""


def run_probe_job(
    account: BrokerAccount, profile: Path, workdir: Path, tmp_path: Path
) -> tuple[list[dict[str, bytes]], dict[str, Any]]:
    """A dispatcher holding the broker password in ZBATCH_RABBIT_URL submits one generic step
    whose tool records its process ancestry; returns the ancestry and the `success` message."""
    tag = secrets.token_hex(4)
    work, done = f"env.{tag}.work", f"env.{tag}.done"
    transport = PikaTransport(account.settings())
    transport.connect()
    try:
        setup_broker(transport, [work, done], quorum=False)
        workdir.parent.mkdir(parents=True, exist_ok=True)
        probe = workdir.parent / "probe.py"
        probe.write_text(PROBE)
        report = workdir / "ancestry.json"
        node = {
            "queue": work,
            "parameters": {
                "wrapper": "generic",
                "workingdir": str(workdir),
                "cluster": {"time_limit": "0:05:00"},
            },
            "job_parameters": {"command": [sys.executable, str(probe), str(report)]},
            "output": {"success": 2},
        }
        recipe = Recipe.from_json({"1": node, "2": {"queue": done}, "start": [[1, {}]]})
        transport.send_step(start_messages(recipe)[0])
        env = {"ZBATCH_RABBIT_URL": account.url, "ZBATCH_ENVTEST_CANARY": "dispatcher-only"}
        dispatcher = Dispatcher(str(profile), work, tmp_path / "dispatcher.log", env, workers=2)
        dispatcher.start()
        try:
            received: list[Any] = []

            def arrived() -> bool:
                delivery = transport.get(done)
                if delivery is not None:
                    received.append(json.loads(delivery.body))
                    transport.ack(delivery)
                return bool(received)

            wait_until(arrived, 120, "the job's success message")
        finally:
            dispatcher.stop()
    finally:
        transport.disconnect()
    ancestry = [
        {"environ": bytes.fromhex(p["environ"]), "cmdline": bytes.fromhex(p["cmdline"])}
        for p in json.loads(report.read_text())
    ]
    log = (tmp_path / "dispatcher.log").read_bytes()
    assert b"Traceback" not in log, log.decode(errors="replace")
    return ancestry, received[0]


def assert_no_secret_in_job(
    account: BrokerAccount, ancestry: list[dict[str, bytes]], workdir: Path, ini: Path
) -> None:
    # Slurm's own daemons are the job's ancestors too; the job is what runs under them.
    job = [p for p in ancestry if not p["cmdline"].startswith((b"slurmstepd", b"slurmd"))]
    scripts = [p for p in job if p["cmdline"].startswith(b"/bin/bash\0")]
    assert scripts, "the job script's shell is not among the probe's ancestors"
    wraps = [p for p in job if b"\0wrap\0" in p["cmdline"]]
    assert wraps, "zbatch wrap is not among the probe's ancestors"
    for process in job:
        shown = process["cmdline"].replace(b"\0", b" ").decode(errors="replace")
        for secret in account.secrets:
            assert secret not in process["environ"], f"{secret!r} in the environment of {shown}"
            assert secret not in process["cmdline"], f"{secret!r} on the command line {shown}"
        names = [v.split(b"=", 1)[0] for v in process["environ"].split(b"\0")]
        assert not [n for n in names if n.startswith(b"ZBATCH_RABBIT")], shown
        assert b"ZBATCH_ENVTEST_CANARY" not in names, f"dispatcher variable reached {shown}"
    # The job reached the broker through the file its profile names, by reference.
    assert f"\0--rabbit-conf\0{ini}\0".encode() in wraps[0]["cmdline"]
    files = [p for p in workdir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".sh") for p in files) and any(
        p.name.endswith(".recipewrap.json") for p in files
    )
    for path in files:
        data = path.read_bytes()
        for secret in account.secrets:
            assert secret not in data, f"{secret!r} in the job's file {path.name}"
    (result,) = workdir.glob("*.result.json")
    record = json.loads(result.read_text())
    assert record["success"] and record["results_sent"], record


@pytest.mark.rabbitmq
def test_local_job_sees_no_broker_secret_and_delivers_through_its_file(
    account: BrokerAccount, make_profile: Any, tmp_path: Path
) -> None:
    ini = account.write_ini(tmp_path / "broker")
    profile = make_profile(name="env-local", job_broker_config=str(ini), poll_interval_s=0.5)
    workdir = tmp_path / "work" / "probe"
    ancestry, success = run_probe_job(account, profile, workdir, tmp_path)
    assert success["recipe-pointer"] == 2
    assert_no_secret_in_job(account, ancestry, workdir, ini)


@pytest.fixture()
def shared_root() -> Iterator[Path]:
    """A folder Slurm's jobs can reach, fresh for each run and removed afterwards."""
    root = JOBS_ROOT / f"env-{secrets.token_hex(6)}"
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.rabbitmq
@pytest.mark.slurm
def test_slurm_job_sees_no_broker_secret_and_delivers_through_its_file(
    account: BrokerAccount, make_profile: Any, tmp_path: Path, shared_root: Path
) -> None:
    root = shared_root
    ini = account.write_ini(root / "broker")
    profile = make_profile(
        name="env-slurm",
        scheduler="slurm",
        connection={"type": "local", "command_timeout_s": 30},
        defaults={"partition": "debug", "cpus": 1, "memory": 256, "time_limit": "0:10:00"},
        workdir_root=str(root),
        job_broker_config=str(ini),
        poll_interval_s=1,
    )
    workdir = root / "jobs" / "probe"
    ancestry, success = run_probe_job(account, profile, workdir, tmp_path)
    assert success["recipe-pointer"] == 2
    assert_no_secret_in_job(account, ancestry, workdir, ini)


# --- the pieces: what passes, and how a job names its broker settings ---------------------


def test_scheduler_commands_get_the_allow_list_only() -> None:
    dispatcher_env = {
        "PATH": "/usr/bin",
        "HOME": "/home/gda2",
        "LC_ALL": "C.UTF-8",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SGE_ROOT": "/opt/sge",
        "ZBATCH_RABBIT_URL": "amqp://u:secret@h/",
        "ZBATCH_RABBIT_CONF": "/etc/zbatch/rabbit.ini",
        "ZBATCH_RABBIT_PASSWORD_FILE": "/etc/zbatch/secret",
        "ZBATCH_STOMP_URL": "stomp://u:secret@h:61613",
        "ZBATCH_STOMP_CONF": "/etc/zbatch/stomp.ini",
        "AWS_SECRET_ACCESS_KEY": "x",
        "SQUEUE_FORMAT": "%i",  # would change what zbatch parses
        "SBATCH_EXPORT": "ALL",
        "LD_PRELOAD": "/x.so",
    }
    assert scrubbed_environment(dispatcher_env, ZBATCH_JOB_ID="7") == {
        "PATH": "/usr/bin",
        "HOME": "/home/gda2",
        "LC_ALL": "C.UTF-8",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SGE_ROOT": "/opt/sge",
        "ZBATCH_JOB_ID": "7",
    }


def test_the_profile_names_the_jobs_broker_settings() -> None:
    given = ["--transport", "pika", "--rabbit-conf", "/etc/dispatcher.ini"]
    assert job_transport_args(given, "/cluster/rabbit.ini") == [
        "--transport",
        "pika",
        "--rabbit-conf",
        "/cluster/rabbit.ini",
    ]
    assert job_transport_args(given, None) == given
    embedded = ["--transport", "embedded", "--embedded-db", "/q.sqlite"]
    assert job_transport_args(embedded, "/cluster/rabbit.ini") == embedded
    stomp = ["--transport", "stomp", "--stomp-conf", "/etc/dispatcher-stomp.ini"]
    assert job_transport_args(stomp, "/cluster/stomp.ini") == [
        "--transport",
        "stomp",
        "--stomp-conf",
        "/cluster/stomp.ini",
    ]
    assert job_transport_args(stomp, None) == stomp


def test_the_dispatchers_own_file_is_passed_as_an_absolute_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = TransportConfig("pika", rabbit_conf="rabbit.ini").job_args()
    assert args == ["--transport", "pika", "--rabbit-conf", str(tmp_path / "rabbit.ini")]
    monkeypatch.setenv("ZBATCH_RABBIT_CONF", "/etc/zbatch/rabbit.ini")
    assert TransportConfig("pika").job_args()[-2:] == ["--rabbit-conf", "/etc/zbatch/rabbit.ini"]
    args = TransportConfig("stomp", stomp_conf="stomp.ini").job_args()
    assert args == ["--transport", "stomp", "--stomp-conf", str(tmp_path / "stomp.ini")]
    monkeypatch.setenv("ZBATCH_STOMP_CONF", "/etc/zbatch/stomp.ini")
    assert TransportConfig("stomp").job_args()[-2:] == ["--stomp-conf", "/etc/zbatch/stomp.ini"]


def test_a_dispatcher_with_only_a_url_warns_that_jobs_get_no_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ZBATCH_RABBIT_URL", "amqp://u:secret@h/")
    factory._warn_once.cache_clear()  # warned once per process: make this the first time
    assert job_transport_args(["--transport", "pika"], None) == ["--transport", "pika"]
    assert "set job_broker_config" in caplog.text and "secret" not in caplog.text
    caplog.clear()
    monkeypatch.setenv("ZBATCH_STOMP_URL", "stomp://u:secret@h:61613")
    assert job_transport_args(["--transport", "stomp"], None) == ["--transport", "stomp"]
    assert "ZBATCH_STOMP_URL" in caplog.text and "--stomp-conf" in caplog.text
    assert "secret" not in caplog.text


SGE_ENV = Path("/var/lib/zbatch-services/sge.env")


@pytest.mark.drmaa
def test_drmaa_job_gets_none_of_the_submitters_environment(
    make_profile: Any, shared_root: Path, zbatch: ZbatchRun
) -> None:
    """DRMAA submits in-process with no job environment: nothing of the submitter's reaches
    the job (SGE gives it the execution daemon's environment and its own SGE_O_* notes)."""
    sge = dict(
        line.removeprefix("export ").split("=", 1)
        for line in SGE_ENV.read_text().splitlines()
        if line.startswith("export ")
    )
    secret = f"drmaa-{secrets.token_hex(8)}"
    env = {
        **sge,
        "ZBATCH_RABBIT_URL": f"amqp://u:{secret}@127.0.0.1/",
        "ZBATCH_ENVTEST_CANARY": secret,
    }
    profile = make_profile(
        name="env-drmaa",
        scheduler="sge",
        connection={"type": "drmaa"},
        defaults={"partition": "all.q", "cpus": 1, "time_limit": "0:10:00"},
        resources={"sge_memory": None},
        workdir_root=str(shared_root),
        poll_interval_s=1,
    )
    workdir = shared_root / "probe"
    shared_root.mkdir(parents=True, exist_ok=True)
    probe = shared_root / "probe.py"
    probe.write_text(PROBE)
    node = {
        "queue": "cluster.submission",
        "parameters": {"wrapper": "generic", "workingdir": str(workdir)},
        "job_parameters": {"command": [sys.executable, str(probe), str(workdir / "a.json")]},
    }
    recipe = write_recipe(shared_root / "r.json", {"1": node, "start": [[1, {}]]})
    done = zbatch("submit", str(recipe), "--profile", str(profile), "--wait", env=env, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    ancestry = [
        {"environ": bytes.fromhex(p["environ"]), "cmdline": bytes.fromhex(p["cmdline"])}
        for p in json.loads((workdir / "a.json").read_text())
    ]
    job = [p for p in ancestry if not p["cmdline"].startswith(b"sge_")]
    assert any(b"\0wrap\0" in p["cmdline"] for p in job), "zbatch wrap is not an ancestor"
    for process in job:
        assert secret.encode() not in process["environ"] + process["cmdline"]
        assert b"ZBATCH_RABBIT" not in process["environ"]
    for path in workdir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path.name
