"""Run commands and move files on a remote host over one SSH connection.

Every command sshd runs starts the user's login shell, and real login scripts are slow
(docs/benchmarks.md, SSH), so a connection keeps ONE remote shell open and feeds it one framed line
per command. Each command runs as `( exec ARGV ) </dev/null >"$d/N.o" 2>"$d/N.e"`; the shell
then prints the exit code and both files between markers carrying a random TAG
(`frame_command` / `parse_reply`). Output travels raw when bash can read it with its `read`
builtin (no process spawned), as base64 otherwise (a NUL byte, or a shell other than bash).
The command's own output never reaches the channel, and the files are named by a counter,
not by the tag, so a command cannot learn the tag and cannot forge a marker.
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
from typing import Any, TypeVar

import paramiko
import tenacity

from zbatch.connections.base import CommandResult, Connection
from zbatch.connections.sftp_wire import SftpSession
from zbatch.errors import ConnectionFailure
from zbatch.model.jobs import FileToPut
from zbatch.model.profiles import ConnectionConfig

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


def frame_command(argv: Sequence[str], tag: str, seq: int, sweep: bool = False) -> bytes:
    """One shell line running argv (no shell syntax of the caller's) and framing its result.

    Output files are named by `seq`, so a stray background child still writing to its file
    cannot leak into a later command's output; `sweep` deletes the old ones (a fork)."""
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
    out, err = f'"$d/{seq:d}.o"', f'"$d/{seq:d}.e"'
    return (
        ('rm -f "$d"/*; ' if sweep else "")
        + f"( exec {shlex.join(argv)} ) </dev/null >{out} 2>{err}; _zb_reply {tag} $? {out} {err}\n"
    ).encode()


# `_zb_reply TAG RC OUT ERR` prints the reply. Each output is nothing (empty file), `r` and
# the raw bytes, or `b` and base64. bash's `read -d ''` reads a file without a process and
# stops at a NUL (status 0): only then is base64 needed. bash prints the reply with one
# printf, so it leaves in one packet; plain sh uses base64 and several writes.
_REPLY_BASH = (
    '_zb_out() { _zb_m=; _zb_v=; [ -s "$1" ] || return 0; '
    'if IFS= read -r -d \'\' _zb_v <"$1"; then _zb_m=b; _zb_v=$(base64 <"$1"); '
    "else _zb_m=r; fi; }; "
    '_zb_reply() { local om ov; _zb_out "$3"; om=$_zb_m ov=$_zb_v; _zb_out "$4"; '
    "printf '\\n%s:rc=%d\\n%s%s\\n%s:err\\n%s%s\\n%s:end\\n' "
    '"$1" "$2" "$om" "$ov" "$1" "$_zb_m" "$_zb_v" "$1"; }'
)
_REPLY_SH = (
    '_zb_out() { [ -s "$1" ] || return 0; printf \'b\\n\'; base64 <"$1"; }; '
    '_zb_reply() { printf \'\\n%s:rc=%d\\n\' "$1" "$2"; _zb_out "$3"; '
    'printf \'\\n%s:err\\n\' "$1"; _zb_out "$4"; printf \'\\n%s:end\\n\' "$1"; }'
)


def shell_setup(tag: str) -> bytes:
    """The first line for a new shell: a private temp dir and the output printer, then an
    empty reply as 'ready'."""
    return (
        'd=$(mktemp -d "${TMPDIR:-/tmp}/zbatch-ssh.XXXXXX") || exit 1; '
        "trap 'rm -rf \"$d\"' EXIT; trap exit HUP PIPE TERM; "
        f'if [ -n "${{BASH_VERSION:-}}" ]; then {_REPLY_BASH}; else {_REPLY_SH}; fi; '
        f"printf '\\n%s:rc=0\\n\\n%s:err\\n\\n%s:end\\n' {tag} {tag} {tag}\n"
    ).encode()


def end_marker(tag: str) -> bytes:
    return f"\n{tag}:end\n".encode()


def _decode_output(region: bytes) -> bytes:
    if not region:
        return b""
    if region[:1] == b"r":
        return region[1:]
    if region[:1] == b"b":
        return base64.b64decode(b"".join(region[1:].split()), validate=True)
    raise ValueError(f"unknown output encoding {region[:1]!r}")


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
        stdout = _decode_output(buf[rc_end + 1 : mid])
        stderr = _decode_output(buf[mid + len(err_mark) : end])
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
        self._sftp: SftpSession | None = None
        self._lock = threading.Lock()
        self._commands = itertools.count(1)
        self._known_dirs: dict[PurePosixPath, None] = {}  # insertion-ordered, bounded

    # -- public API -------------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: float | None = None) -> CommandResult:
        limit = timeout or self.config.command_timeout_s
        tag, seq = secrets.token_hex(16), next(self._commands)
        line = frame_command(argv, tag, seq, sweep=seq % SWEEP_EVERY == 0)
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

    def put_file(self, path: PurePosixPath, data: str, mode: int = 0o600) -> None:
        self.put_files([FileToPut(path, data, mode)])

    def put_files(self, files: Sequence[FileToPut]) -> None:
        """Write-then-rename over SFTP, all files in three round trips (`sftp_wire`), missing
        folders created (0700) in the first; modes are exact (set on the open handle), and no
        symbolic link at a final or temporary name is followed."""

        def write(sftp: SftpSession) -> None:
            # Folders made already are not asked for again (a few requests less per job).
            folders = dict.fromkeys(item.path.parent for item in files)
            new = [folder for folder in folders if folder not in self._known_dirs]
            sftp.put_files(files, new)
            for folder in new:
                self._known_dirs[folder] = None
                if len(self._known_dirs) > KNOWN_DIRS:
                    self._known_dirs.pop(next(iter(self._known_dirs)))

        where = ", ".join(str(item.path) for item in files)
        self._file_op(f"write {where}", write, permanent=True)

    def resolve_paths(self, paths: Sequence[str]) -> list[str]:
        """Real paths on the remote host: every ancestor of every path goes out as an SFTP
        REALPATH in one write, so a job's paths cost one round trip and no remote process."""
        if not paths:
            return []
        return self._file_op(
            f"resolve {', '.join(paths)}", lambda sftp: sftp.realpaths(paths), permanent=False
        )

    def read_file(self, path: PurePosixPath) -> str | None:
        def read(sftp: SftpSession) -> str | None:
            data = sftp.read(path)
            return None if data is None else data.decode(errors="replace")

        return self._file_op(f"read {path}", read, permanent=False)

    def warm_up(self) -> None:
        """Log in and start the remote shell and the SFTP channel now."""
        with self._lock:
            self._with_reconnect(self._open_shell)
        self._file_op("open sftp", lambda _sftp: None, permanent=False)

    def packets(self) -> tuple[int, int]:
        """SSH packets sent and received so far on the current link (for tests and tuning)."""
        transport = self._transport()
        if transport is None:
            return (0, 0)
        counters = transport.packetizer
        # paramiko counts packets for its rekeying, under name-mangled attributes.
        sent = getattr(counters, "_Packetizer__sent_packets", 0)
        received = getattr(counters, "_Packetizer__received_packets", 0)
        return int(sent), int(received)

    def close(self) -> None:
        with self._lock:
            self._drop_shell()
            self._drop_sftp()
            self._client.close()

    # -- connection and shell ---------------------------------------------------------------
    def _with_reconnect(self, action: Callable[[], T]) -> T:
        """Retry `action` while it fails before reaching the host: with backoff once we have
        been connected (a drop), but not after a failed first connect (bad config fails fast).
        The first attempt runs without tenacity: it is every command's path."""
        try:
            return action()
        except _NotSent as exc:
            if not self.connects:
                raise exc.failure from None
            log.warning("%s; reconnecting", exc.failure.message)
        time.sleep(0.25)  # as tenacity's first wait below
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(RECONNECT_WINDOW_S),
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
                transport_factory=_transport_preferring_aead,
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
    def _open_sftp(self) -> SftpSession:
        if self._sftp is not None and not self._sftp.closed and self._transport():
            return self._sftp
        self._drop_sftp()
        transport = self._connect()
        channel: paramiko.Channel | None = None
        try:
            channel = transport.open_session(timeout=self.config.connect_timeout_s)
            self.channels_opened += 1
            channel.settimeout(self.config.command_timeout_s)
            self._sftp = SftpSession(channel)
        except (*_LINK_ERRORS, ValueError) as exc:
            if channel is not None:
                channel.close()
            raise _NotSent(ConnectionFailure(f"cannot open sftp on {self.where}: {exc}")) from None
        return self._sftp

    def _file_op(self, what: str, op: Callable[[SftpSession], T], permanent: bool) -> T:
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


# AES-GCM first: paramiko checks every other cipher's MAC with a byte-by-byte Python loop
# (constant_time_bytes_eq), the largest cost of a small packet; GCM's tag is checked in C.
_AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _transport_preferring_aead(sock: Any, /, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    options.ciphers = (
        *(c for c in _AEAD_CIPHERS if c in offered),
        *(c for c in offered if c not in _AEAD_CIPHERS),
    )
    return transport
