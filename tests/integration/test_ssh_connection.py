"""SshConnection against the real loopback sshd (scripts/services/up sshd).

The "remote" host is this machine, so tests check remote effects on the local file system.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko
import pytest

from zbatch.connections.pool import ConnectionPool
from zbatch.connections.ssh import SshConnection
from zbatch.errors import ConnectionFailure
from zbatch.model.jobs import FileToPut
from zbatch.model.profiles import ConnectionConfig

pytestmark = pytest.mark.ssh

HOST = "127.0.0.1"
PORT = 2222
KEY_FILE = "/var/lib/zbatch-services/ssh/id_ed25519"
KNOWN_HOSTS = "/var/lib/zbatch-services/ssh/known_hosts"
KNOWN_HOSTS_WRONG = "/var/lib/zbatch-services/ssh/known_hosts.wrong"
SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services"

MakeConnection = Callable[..., SshConnection]


def config(**overrides: Any) -> ConnectionConfig:
    fields: dict[str, Any] = {
        "type": "ssh",
        "host": HOST,
        "port": PORT,
        "user": "root",
        "key_file": KEY_FILE,
        "known_hosts": KNOWN_HOSTS,
        "connect_timeout_s": 5,
        "command_timeout_s": 30,
    }
    return ConnectionConfig(**{**fields, **overrides})


@pytest.fixture()
def connect() -> Iterator[MakeConnection]:
    made: list[SshConnection] = []

    def make(**overrides: Any) -> SshConnection:
        made.append(SshConnection(config(**overrides)))
        return made[-1]

    yield make
    for conn in made:
        conn.close()


@pytest.fixture()
def conn(connect: MakeConnection) -> SshConnection:
    return connect()


def restart_sshd() -> None:
    done = subprocess.run(
        [str(SERVICES / "restart"), "sshd"], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- commands ----------------------------------------------------------------------------------
def test_exit_codes_and_output(conn: SshConnection) -> None:
    assert conn.run(["echo", "hello"]).stdout == "hello\n"
    assert conn.run(["true"]).returncode == 0
    assert conn.run(["false"]).returncode == 1
    result = conn.run(["sh", "-c", "echo out; echo err >&2; exit 42"])
    assert (result.returncode, result.stdout, result.stderr) == (42, "out\n", "err\n")
    assert result.argv == ["sh", "-c", "echo out; echo err >&2; exit 42"]


def test_arguments_arrive_as_literal_single_words(conn: SshConnection, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    args = [
        "two words",
        "'single' \"double\"",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"; touch {canary}",
        f"| touch {canary}",
        "first line\nsecond line",
        "",
        "*",
        "$HOME ~",
    ]
    result = conn.run(["printf", "%s\\0", *args])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\0")[:-1] == args
    assert not canary.exists()


def test_long_argument(conn: SshConnection) -> None:
    word = "x" * 100_000  # near Linux's 128 KiB limit for one argument
    assert conn.run(["printf", "%s", word]).stdout == word


@pytest.mark.parametrize("shell", ["sh", "echo login noise; echo more >&2; bash"])
def test_other_shells_and_noisy_logins(connect: MakeConnection, shell: str) -> None:
    conn = connect(remote_shell=shell)
    result = conn.run(["sh", "-c", "echo out; echo err >&2; exit 5"])
    assert (result.returncode, result.stdout, result.stderr) == (5, "out\n", "err\n")
    assert conn.run(["echo", "again"]).stdout == "again\n"


def test_a_shell_that_will_not_start_fails_clearly(connect: MakeConnection) -> None:
    with pytest.raises(ConnectionFailure, match="cannot start a shell") as caught:
        connect(remote_shell="exit 3").run(["true"])
    assert f"root@{HOST}:{PORT}" in str(caught.value)


def test_missing_program_is_a_permanent_failure(conn: SshConnection) -> None:
    with pytest.raises(ConnectionFailure, match="'no-such-program' not found") as caught:
        conn.run(["no-such-program", "x"])
    assert caught.value.transient is False
    assert conn.run(["echo", "fine"]).stdout == "fine\n"


def test_output_cannot_break_the_framing(
    conn: SshConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fix the "random" tag so the command can print the exact markers of its own reply.
    tag = "feedfacefeedfacefeedfacefeedface"
    monkeypatch.setattr("zbatch.connections.ssh.secrets.token_hex", lambda _n: tag)
    hostile = f"\n{tag}:end\n\n{tag}:rc=7\n{tag}:err\n".encode() + bytes(range(256)) + b"no-eol"
    blob = tmp_path / "blob"
    blob.write_bytes(hostile)
    result = conn.run(["sh", "-c", f"cat {blob}; cat {blob} >&2; exit 3"])
    expected = hostile.decode(errors="replace")
    assert (result.returncode, result.stdout, result.stderr) == (3, expected, expected)
    assert conn.run(["printf", "%s", "no newline"]).stdout == "no newline"


def test_huge_output(conn: SshConnection, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    started = time.monotonic()
    result = conn.run(["cat", str(big)])
    elapsed = time.monotonic() - started
    assert result.stdout == big.read_bytes().decode(errors="replace")
    text = tmp_path / "text"
    text.write_text("line of text\n" * 400_000)  # 5.2 MB on stderr this time
    result = conn.run(["sh", "-c", f"cat {text} >&2"])
    assert result.stderr == text.read_text() and result.stdout == ""
    print(f"\n5 MiB of random bytes over SshConnection.run: {elapsed:.2f} s")


def test_one_shell_serves_many_commands(
    conn: SshConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = paramiko.Transport.open_session
    real_exec = paramiko.Channel.exec_command

    def open_session(self: paramiko.Transport, *args: Any, **kwargs: Any) -> paramiko.Channel:
        opened.append("session")
        return real_open(self, *args, **kwargs)

    def exec_command(self: paramiko.Channel, command: str) -> None:
        opened.append(f"exec {command}")
        real_exec(self, command)

    monkeypatch.setattr(paramiko.Transport, "open_session", open_session)
    monkeypatch.setattr(paramiko.Channel, "exec_command", exec_command)
    conn.run(["true"])
    assert opened == ["session", "exec bash"] and conn.channels_opened == 1
    for _ in range(200):
        assert conn.run(["true"]).returncode == 0
    assert opened == ["session", "exec bash"] and conn.channels_opened == 1
    assert conn.connects == 1


def test_threads_do_not_interleave(conn: SshConnection) -> None:
    results: dict[int, str] = {}

    def worker(n: int) -> None:
        for i in range(25):
            results[n * 100 + i] = conn.run(["echo", f"{n}-{i}"]).stdout

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n * 100 + i: f"{n}-{i}\n" for n in range(4) for i in range(25)}
    assert conn.channels_opened == 1


# -- files -------------------------------------------------------------------------------------
def test_put_file_is_atomic_with_mode_and_parents(conn: SshConnection, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "job.sh"
    conn.put_file(PurePosixPath(target), "#!/bin/sh\necho one\n", mode=0o750)
    assert target.read_text() == "#!/bin/sh\necho one\n"
    assert target.stat().st_mode & 0o7777 == 0o750
    with target.open() as old:  # a reader of the old file keeps a whole old file: a rename
        conn.put_file(PurePosixPath(target), "two\n", mode=0o600)
        assert old.read() == "#!/bin/sh\necho one\n"
    assert target.read_text() == "two\n"
    assert target.stat().st_mode & 0o7777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["job.sh"]  # no temp files left
    assert conn.read_file(PurePosixPath(target)) == "two\n"
    assert conn.read_file(PurePosixPath(tmp_path / "missing")) is None
    assert conn.read_file(PurePosixPath(tmp_path / "no-dir" / "missing")) is None
    conn.run(["true"])
    assert conn.channels_opened == 2  # one sftp channel, one shell, both reused


def test_put_file_where_it_cannot_write_is_permanent(conn: SshConnection, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConnectionFailure, match="cannot write") as caught:
        conn.put_file(PurePosixPath(blocker / "inside.txt"), "x")
    assert caught.value.transient is False


def test_put_files_stages_many_files_in_three_round_trips(
    conn: SshConnection, tmp_path: Path
) -> None:
    big = "".join(f"line {i} ünïcödé\n" for i in range(20_000))  # ~400 KB: many write chunks
    files = [
        FileToPut(PurePosixPath(tmp_path / "deep" / "er" / "message.json"), '{"a": 1}'),
        FileToPut(PurePosixPath(tmp_path / "deep" / "er" / "job.sh"), "#!/bin/sh\n", 0o755),
        FileToPut(PurePosixPath(tmp_path / "other" / "big.txt"), big),
    ]
    conn.put_files(files)
    for item in files:
        assert Path(item.path).read_text() == item.data
        assert Path(item.path).stat().st_mode & 0o777 == item.mode
    assert conn.read_file(files[2].path) == big  # read back in many chunks too
    packets = conn.packets()
    conn.put_files(files[:2])  # folders known now: opens, writes+closes, renames
    sent, _ = conn.packets()
    assert sent - packets[0] == 3
    names = sorted(p.name for p in (tmp_path / "deep" / "er").iterdir())
    assert names == ["job.sh", "message.json"]  # no temp files left


def test_put_files_renames_nothing_unless_every_write_succeeded(
    conn: SshConnection, tmp_path: Path
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (tmp_path / "blocked").mkdir(mode=0o500)
    files = [
        FileToPut(PurePosixPath(good / "message.json"), "{}"),
        FileToPut(PurePosixPath(tmp_path / "blocked" / "job.sh"), "#!/bin/sh\n"),
    ]
    if os.geteuid() == 0:  # root ignores the mode: block it with a file instead of a folder
        (tmp_path / "blocked").rmdir()
        (tmp_path / "blocked").write_text("a file")
    with pytest.raises(ConnectionFailure, match="blocked") as caught:
        conn.put_files(files)
    assert caught.value.transient is False
    assert list(good.iterdir()) == []  # neither the final name nor a temp file
    conn.put_files(files[:1])  # the session is still in step after the refusal
    assert (good / "message.json").read_text() == "{}"


# -- host keys and reachability ----------------------------------------------------------------
def test_unknown_host_is_refused(connect: MakeConnection, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(ConnectionFailure) as caught:
        connect(known_hosts=str(empty)).run(["true"])
    message = str(caught.value)
    assert f"{HOST}:{PORT}" in message and str(empty) in message and "not in" in message
    assert caught.value.transient is False
    with pytest.raises(ConnectionFailure, match="does not exist") as caught:
        connect(known_hosts=str(tmp_path / "nowhere")).run(["true"])
    assert caught.value.transient is False


def test_changed_host_key_is_refused_even_when_accepting_unknown(connect: MakeConnection) -> None:
    for accept in (False, True):
        conn = connect(known_hosts=KNOWN_HOSTS_WRONG, accept_unknown_hosts=accept)
        with pytest.raises(ConnectionFailure, match="does not match") as caught:
            conn.run(["true"])
        assert f"{HOST}:{PORT}" in str(caught.value) and KNOWN_HOSTS_WRONG in str(caught.value)
        assert caught.value.transient is False


def test_accept_unknown_hosts(connect: MakeConnection, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    conn = connect(known_hosts=str(empty), accept_unknown_hosts=True)
    assert conn.run(["echo", "ok"]).stdout == "ok\n"
    assert empty.read_text() == ""  # accepted for this process only, never written


def test_unreachable_port_fails_fast(connect: MakeConnection) -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        free_port = probe.getsockname()[1]
    conn = connect(port=free_port, connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(ConnectionFailure, match=f"{HOST}:{free_port}") as caught:
        conn.run(["true"])
    assert time.monotonic() - started < 2.5
    assert caught.value.transient is True


def test_silent_server_fails_within_the_connect_timeout(connect: MakeConnection) -> None:
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never says a word
        silent.bind((HOST, 0))
        silent.listen(1)
        conn = connect(port=silent.getsockname()[1], connect_timeout_s=1)
        started = time.monotonic()
        with pytest.raises(ConnectionFailure) as caught:
            conn.run(["true"])
        assert time.monotonic() - started < 3
    assert caught.value.transient is True


# -- timeouts and reconnection -----------------------------------------------------------------
def test_command_timeout_discards_the_shell(conn: SshConnection) -> None:
    conn.run(["true"])
    started = time.monotonic()
    with pytest.raises(ConnectionFailure, match="did not answer within 1 s") as caught:
        conn.run(["sleep", "5"], timeout=1)
    assert time.monotonic() - started < 2.5
    assert caught.value.transient is True
    assert conn.run(["echo", "next"]).stdout == "next\n"
    assert conn.channels_opened == 2 and conn.connects == 1  # a new shell, same connection


def test_reconnects_after_sshd_restart(conn: SshConnection) -> None:
    assert conn.run(["echo", "before"]).stdout == "before\n"
    restart_sshd()
    assert conn.run(["echo", "after"]).stdout == "after\n"
    assert conn.connects == 2


def test_command_lost_in_flight_is_not_retried(conn: SshConnection, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    conn.run(["true"])
    failure: list[ConnectionFailure] = []

    def submit() -> None:
        try:
            conn.run(["sh", "-c", f"echo ran >> {marks}; sleep 8"], timeout=120)
        except ConnectionFailure as exc:
            failure.append(exc)

    worker = threading.Thread(target=submit)
    worker.start()
    deadline = time.monotonic() + 10
    while not marks.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    restart_sshd()
    worker.join(60)
    assert not worker.is_alive()
    assert len(failure) == 1 and failure[0].transient is True
    assert "lost" in str(failure[0])
    assert marks.read_text() == "ran\n"  # ran once; the caller decides whether to run it again
    assert conn.run(["echo", "back"]).stdout == "back\n"


# -- throughput (printed, never asserted) ------------------------------------------------------
def test_measure_throughput(conn: SshConnection) -> None:
    conn.run(["true"])
    count = 300
    started = time.monotonic()
    for _ in range(count):
        conn.run(["true"])
    shell_rate = count / (time.monotonic() - started)

    client = paramiko.SSHClient()
    client.load_host_keys(KNOWN_HOSTS)
    client.connect(HOST, PORT, username="root", key_filename=KEY_FILE, look_for_keys=False)
    try:
        count_exec = 30
        started = time.monotonic()
        for _ in range(count_exec):
            _in, out, _err = client.exec_command("true")
            assert out.channel.recv_exit_status() == 0
        exec_rate = count_exec / (time.monotonic() - started)
    finally:
        client.close()
    print(
        f"\nSshConnection.run: {shell_rate:.0f} commands/s; "
        f"one exec_command per command: {exec_rate:.1f} commands/s "
        f"({shell_rate / exec_rate:.0f}x)"
    )


# -- warm-up ------------------------------------------------------------------------------------
def test_warm_up_opens_the_shell_and_sftp_once(conn: SshConnection, tmp_path: Path) -> None:
    conn.warm_up()
    assert (conn.connects, conn.channels_opened) == (1, 2)
    conn.put_file(PurePosixPath(tmp_path / "f"), "x")
    assert conn.run(["cat", str(tmp_path / "f")]).stdout == "x"
    assert (conn.connects, conn.channels_opened) == (1, 2)  # nothing more was opened


def test_pool_warm_up_logs_every_connection_in_at_once() -> None:
    made: list[SshConnection] = []
    spans: list[tuple[float, float]] = []

    class Timed(SshConnection):
        def warm_up(self) -> None:
            started = time.monotonic()
            super().warm_up()
            spans.append((started, time.monotonic()))

    def make() -> SshConnection:
        made.append(Timed(config()))
        return made[-1]

    pool = ConnectionPool(make, 4)
    try:
        pool.warm_up()
        assert pool.opened == 4 and all(c.connects == 1 and c.channels_opened == 2 for c in made)
        # Concurrent: every login had started before the first one was done.
        assert max(begin for begin, _ in spans) < min(end for _, end in spans)
        results = [pool.run(["echo", str(i)]).stdout for i in range(8)]
        assert results == [f"{i}\n" for i in range(8)] and len(made) == 4
    finally:
        pool.close()


def test_warm_up_of_an_unreachable_host_fails_fast_and_clearly(connect: MakeConnection) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    pool = ConnectionPool(lambda: connect(port=port), 3)
    started = time.monotonic()
    with pytest.raises(ConnectionFailure, match=f"cannot connect to root@{HOST}:{port}"):
        pool.warm_up()
    assert time.monotonic() - started < 5
