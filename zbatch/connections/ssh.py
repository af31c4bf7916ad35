"""Run commands and move files on a remote host over one SSH connection.

Every command sshd runs starts the user's login shell, and real login scripts are slow
(150-170 ms here), so a connection keeps ONE remote shell open and feeds it one framed line
per command. Each command runs as `( exec ARGV ) </dev/null >"$d/TAG.o" 2>"$d/TAG.e"`; the
shell then prints the exit code and both files in base64 between markers carrying the random
TAG (`frame_command` / `parse_reply`). The command's own output never reaches the channel,
and base64 cannot contain a marker, so no output can break the framing.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import itertools
import logging
import os
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TypeVar

import paramiko
import tenacity

from zbatch.connections.base import CommandResult, Connection
from zbatch.errors import ConnectionFailure
from zbatch.profiles import ConnectionConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
RECONNECT_WINDOW_S = 30.0
SWEEP_EVERY = 200  # commands between deletions of old output files in the remote temp dir
_CHUNK = 1 << 16
# Paramiko's errors for a dead or broken channel/transport (socket errors are OSError).
_LINK_ERRORS = (OSError, EOFError, paramiko.SSHException)


@dataclass(frozen=True)
class Reply:
    returncode: int
    stdout: bytes
    stderr: bytes


def frame_command(argv: Sequence[str], tag: str, sweep: bool = False) -> bytes:
    """One shell line running argv (no shell syntax of the caller's) and framing its result.

    Output files are named after the tag, so a stray background child still writing to its
    file cannot leak into a later command's output; `sweep` deletes the old ones (a fork)."""
    if not argv:
        raise ValueError("cannot run an empty argument list")
    if any("\0" in arg for arg in argv):
        raise ValueError(f"{argv[0]!r}: arguments cannot contain NUL bytes")
    if not tag.isalnum():  # it is spliced into the line unquoted
        raise ValueError(f"tag {tag!r} must be alphanumeric")
    if argv[0].startswith("-"):  # `exec` would read it as an option (and sh's exec has no --)
        raise ValueError(f"{argv[0]!r}: a program name cannot start with '-'")
    # shlex.join quotes every word, so keywords (`if`), `;`, `$(..)` and newlines stay literal;
    # `exec` in a subshell runs a program like subprocess does: no builtins, no shell state.
    out, err = f'"$d/{tag}.o"', f'"$d/{tag}.e"'
    return (
        ('rm -f "$d"/*; ' if sweep else "")
        + f"( exec {shlex.join(argv)} ) </dev/null >{out} 2>{err}; "
        + f"printf '\\n%s:rc=%d\\n' {tag} $?; [ -s {out} ] && base64 <{out}; "
        + f"printf '\\n%s:err\\n' {tag}; [ -s {err} ] && base64 <{err}; "
        + f"printf '\\n%s:end\\n' {tag}\n"
    ).encode()


def shell_setup(tag: str) -> bytes:
    """The first line for a new shell: a private temp dir, then an empty reply as 'ready'."""
    return (
        'd=$(mktemp -d "${TMPDIR:-/tmp}/zbatch-ssh.XXXXXX") || exit 1; '
        "trap 'rm -rf \"$d\"' EXIT; trap exit HUP PIPE TERM; "
        f"printf '\\n%s:rc=0\\n\\n%s:err\\n\\n%s:end\\n' {tag} {tag} {tag}\n"
    ).encode()


def end_marker(tag: str) -> bytes:
    return f"\n{tag}:end\n".encode()


def parse_reply(buf: bytes, tag: str) -> Reply:
    """The reply tagged `tag` in `buf` (anything before it is ignored); ValueError if mangled."""
    end = buf.find(end_marker(tag))
    rc_mark, err_mark = f"\n{tag}:rc=".encode(), f"\n{tag}:err\n".encode()
    begin = buf.rfind(rc_mark, 0, end)
    mid = buf.find(err_mark, begin, end)
    if end < 0 or begin < 0 or mid < 0:
        raise ValueError(f"reply {tag} lacks a marker")
    rc_end = buf.find(b"\n", begin + len(rc_mark), mid + 1)
    try:
        returncode = int(buf[begin + len(rc_mark) : rc_end])
        stdout = base64.b64decode(b"".join(buf[rc_end:mid].split()), validate=True)
        stderr = base64.b64decode(b"".join(buf[mid + len(err_mark) : end].split()), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"reply {tag} is mangled: {exc}") from None
    return Reply(returncode, stdout, stderr)


class _NotSent(Exception):
    """The command never reached the remote shell, so retrying it cannot run it twice."""

    def __init__(self, failure: ConnectionFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown hosts unless the profile accepts them (then only for this process)."""

    def __init__(self, where: str, known_hosts: str, accept: bool) -> None:
        self.where, self.known_hosts, self.accept = where, known_hosts, accept

    def missing_host_key(self, client: paramiko.SSHClient, name: str, key: paramiko.PKey) -> None:
        if self.accept:
            log.warning("accepting unknown host key %s of %s", key.fingerprint, self.where)
            client.get_host_keys().add(name, key.get_name(), key)
            return
        missing = "" if os.path.exists(self.known_hosts) else " (the file does not exist)"
        raise ConnectionFailure(
            f"host key of {self.where} ({key.get_name()} {key.fingerprint}) is not in "
            f"{self.known_hosts}{missing}; add it (ssh-keyscan) or set accept_unknown_hosts",
            transient=False,
        )


# New files get 0644 from sftp-server's usual umask; other modes cost one chmod round trip.
DEFAULT_FILE_MODE = 0o644
KNOWN_DIRS = 4096


class SshConnection(Connection):
    def __init__(self, config: ConnectionConfig) -> None:
        if not config.host:
            raise ConnectionFailure("an ssh connection needs a host", transient=False)
        self.config = config
        self.user = config.user or getpass.getuser()
        self.where = f"{self.user}@{config.host}:{config.port}"
        self.known_hosts = os.path.expanduser(config.known_hosts or "~/.ssh/known_hosts")
        self.channels_opened = 0  # shell + sftp channels: constant while both are reused
        self.connects = 0
        self._client = paramiko.SSHClient()
        self._client.set_missing_host_key_policy(
            _HostKeyPolicy(self.where, self.known_hosts, config.accept_unknown_hosts)
        )
        self._shell: paramiko.Channel | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()
        self._commands = itertools.count(1)
        self._known_dirs: dict[PurePosixPath, None] = {}  # insertion-ordered, bounded

    # -- public API -------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult:
        limit = timeout or self.config.command_timeout_s
        tag = secrets.token_hex(16)
        line = frame_command(argv, tag, sweep=next(self._commands) % SWEEP_EVERY == 0)
        with self._lock:
            shell = self._with_reconnect(lambda: self._send(line))
            try:
                reply = self._receive(shell, tag, time.monotonic() + limit)
            except TimeoutError:
                self._drop_shell()  # it may be stuck in the command: the next call starts afresh
                raise ConnectionFailure(
                    f"{argv[0]} on {self.where} did not answer within {limit:g} s"
                ) from None
            except (*_LINK_ERRORS, ValueError) as exc:  # sent, so it may have run: no retry
                self._drop_shell()
                raise ConnectionFailure(f"lost {self.where} while {argv[0]} ran: {exc!r}") from None
        out, err = reply.stdout.decode(errors="replace"), reply.stderr.decode(errors="replace")
        if reply.returncode == 127 and f"exec: {argv[0]}: not found" in err:  # as LocalConnection
            raise ConnectionFailure(f"{argv[0]!r} not found on {self.where}", transient=False)
        return CommandResult(list(argv), reply.returncode, out, err)

    def put_file(self, path: PurePosixPath, data: str, mode: int = 0o644) -> None:
        def write(sftp: paramiko.SFTPClient) -> None:
            # Each SFTP call is a round trip: skip the folder check for folders made already.
            if path.parent not in self._known_dirs:
                _makedirs(sftp, path.parent)
                self._known_dirs[path.parent] = None
                if len(self._known_dirs) > KNOWN_DIRS:
                    self._known_dirs.pop(next(iter(self._known_dirs)))
            temp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
            try:
                with sftp.open(temp, "wb") as handle:
                    handle.set_pipelined(True)  # the close confirms the writes
                    handle.write(data.encode())
                if mode != DEFAULT_FILE_MODE:  # before the rename: the final name never has others
                    sftp.chmod(temp, mode)
                sftp.posix_rename(temp, str(path))
            except BaseException:
                with suppress(*_LINK_ERRORS):
                    sftp.remove(temp)
                raise

        self._file_op(f"write {path}", write, permanent=True)

    def read_file(self, path: PurePosixPath) -> str | None:
        def read(sftp: paramiko.SFTPClient) -> str | None:
            try:
                with sftp.open(str(path), "rb") as handle:
                    return handle.read().decode(errors="replace")
            except FileNotFoundError:
                return None

        return self._file_op(f"read {path}", read, permanent=False)

    def close(self) -> None:
        with self._lock:
            self._drop_shell()
            self._drop_sftp()
            self._client.close()

    # -- connection and shell ---------------------------------------------------------------
    def _with_reconnect(self, action: Callable[[], T]) -> T:
        """Retry `action` while it fails before reaching the host: with backoff once we have
        been connected (a drop), but only once on the first connect (bad config fails fast)."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(RECONNECT_WINDOW_S)
            if self.connects
            else tenacity.stop_after_attempt(1),
            wait=tenacity.wait_exponential(multiplier=0.25, max=5),
            retry=tenacity.retry_if_exception_type(_NotSent),
            before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        try:
            return retrying(action)
        except _NotSent as exc:
            raise exc.failure from None

    def _transport(self) -> paramiko.Transport | None:
        transport = self._client.get_transport()
        return transport if transport is not None and transport.is_active() else None

    def _connect(self) -> paramiko.Transport:
        transport = self._transport()
        if transport is not None:
            return transport
        self._drop_shell()
        self._drop_sftp()
        self._client.close()
        cfg = self.config
        key_file = os.path.expanduser(cfg.key_file) if cfg.key_file else None
        if key_file and not os.path.isfile(key_file):
            raise ConnectionFailure(f"ssh key {key_file} does not exist", transient=False)
        with suppress(FileNotFoundError):  # a missing file knows no hosts (policy says so)
            self._client.get_host_keys().load(self.known_hosts)  # load(), so never written
        try:
            self._client.connect(
                cfg.host or "",
                cfg.port,
                username=self.user,
                key_filename=key_file,
                timeout=cfg.connect_timeout_s,
                banner_timeout=cfg.connect_timeout_s,
                auth_timeout=cfg.connect_timeout_s,
                allow_agent=key_file is None,
                look_for_keys=key_file is None,
            )
        except paramiko.BadHostKeyException as exc:
            self._client.close()
            raise ConnectionFailure(
                f"host key of {self.where} ({exc.key.get_name()} {exc.key.fingerprint}) does not"
                f" match {self.known_hosts} ({exc.expected_key.fingerprint}): refusing, as a"
                " man-in-the-middle would look the same; fix that file if the host was re-keyed",
                transient=False,
            ) from None
        except paramiko.AuthenticationException as exc:
            self._client.close()
            raise ConnectionFailure(
                f"{self.where} refused our key: {exc}", transient=False
            ) from None
        except ConnectionFailure:  # from _HostKeyPolicy
            self._client.close()
            raise
        except (*_LINK_ERRORS, ValueError) as exc:
            self._client.close()
            raise _NotSent(ConnectionFailure(f"cannot connect to {self.where}: {exc}")) from None
        self.connects += 1
        log.info("connected to %s (connection %d)", self.where, self.connects)
        transport = self._transport()
        if transport is None:
            raise _NotSent(ConnectionFailure(f"{self.where} closed right after connecting"))
        if cfg.keepalive_s:
            transport.set_keepalive(cfg.keepalive_s)
        return transport

    def _open_shell(self) -> paramiko.Channel:
        live = self._shell
        if live is not None and self._transport() and not (live.closed or live.eof_received):
            return live
        self._drop_shell()
        transport = self._connect()
        tag = secrets.token_hex(16)
        shell: paramiko.Channel | None = None
        try:
            shell = transport.open_session(timeout=self.config.connect_timeout_s)
            self.channels_opened += 1
            shell.set_combine_stderr(True)  # the shell's own complaints must not fill a window
            shell.exec_command(self.config.remote_shell)  # login scripts run here, once
            shell.sendall(shell_setup(tag))
            self._receive(shell, tag, time.monotonic() + self.config.command_timeout_s)
        except (*_LINK_ERRORS, ValueError) as exc:
            if shell is not None:
                shell.close()
            failure = ConnectionFailure(f"cannot start a shell on {self.where}: {exc!r}")
            raise _NotSent(failure) from None
        self._shell = shell
        return shell

    def _send(self, line: bytes) -> paramiko.Channel:
        shell = self._open_shell()
        sent = 0
        try:
            shell.settimeout(self.config.connect_timeout_s)
            while sent < len(line):
                count = shell.send(line[sent:])
                if count == 0:
                    raise EOFError("channel closed")
                sent += count
        except _LINK_ERRORS as exc:
            self._drop_shell()
            failure = ConnectionFailure(f"lost {self.where} while sending a command: {exc}")
            if sent < len(line):  # the final newline never left: the shell cannot run it
                raise _NotSent(failure) from None
            raise failure from None
        return shell

    def _receive(self, shell: paramiko.Channel, tag: str, deadline: float) -> Reply:
        marker, buf, scan = end_marker(tag), bytearray(), 0
        while (found := buf.find(marker, scan)) < 0:
            scan = max(0, len(buf) - len(marker))  # only search new bytes: replies can be MBs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            shell.settimeout(remaining)
            chunk = shell.recv(_CHUNK)
            if not chunk:
                raise EOFError("the remote shell exited")
            buf += chunk
        return parse_reply(bytes(buf[: found + len(marker)]), tag)

    def _drop_shell(self) -> None:
        if self._shell is not None:
            with suppress(*_LINK_ERRORS):
                self._shell.close()
            self._shell = None

    # -- files ------------------------------------------------------------------------------
    def _open_sftp(self) -> paramiko.SFTPClient:
        channel = self._sftp.get_channel() if self._sftp is not None else None
        if self._sftp is not None and channel and not channel.closed and self._transport():
            return self._sftp
        self._drop_sftp()
        self._connect()
        try:
            self._sftp = self._client.open_sftp()
        except _LINK_ERRORS as exc:
            raise _NotSent(ConnectionFailure(f"cannot open sftp on {self.where}: {exc}")) from None
        self.channels_opened += 1
        channel = self._sftp.get_channel()
        if channel is not None:
            channel.settimeout(self.config.command_timeout_s)
        return self._sftp

    def _file_op(self, what: str, op: Callable[[paramiko.SFTPClient], T], permanent: bool) -> T:
        """File operations are idempotent, so they are retried after any drop."""

        def attempt() -> T:
            sftp = self._open_sftp()
            try:
                return op(sftp)
            except _LINK_ERRORS as exc:
                # An OSError over a live transport is the remote file system's answer.
                answer = isinstance(exc, OSError) and not isinstance(exc, TimeoutError)
                if answer and self._transport() is not None:
                    raise ConnectionFailure(
                        f"cannot {what} on {self.where}: {exc}", transient=not permanent
                    ) from None
                self._drop_sftp()
                raise _NotSent(ConnectionFailure(f"lost {self.where}: {exc}")) from None

        with self._lock:
            return self._with_reconnect(attempt)

    def _drop_sftp(self) -> None:
        if self._sftp is not None:
            with suppress(*_LINK_ERRORS):
                self._sftp.close()
            self._sftp = None


def _makedirs(sftp: paramiko.SFTPClient, folder: PurePosixPath) -> None:
    """mkdir -p over SFTP, trying the folder itself first (one round trip when only it is new).
    A failed mkdir (or a lost race) is left for the write to report."""
    try:
        sftp.mkdir(str(folder))
        return
    except FileNotFoundError:  # a parent is missing too
        if folder.parent != folder:
            _makedirs(sftp, folder.parent)
    except OSError:
        return  # it exists (or cannot be made: the write will say so)
    with suppress(OSError):
        sftp.mkdir(str(folder))
