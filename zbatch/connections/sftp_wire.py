"""The few SFTP (version 3) requests zbatch needs, pipelined over one paramiko channel.

paramiko's SFTPClient sends each request as its own SSH packet and waits for its answer:
staging two files takes eight round trips and sixteen packets, and on a busy login node the
packets, not the bytes, are the cost. SFTP lets a client send many requests at once, and
OpenSSH's sftp-server answers them in order, so `SftpSession` sends each phase of a job's
staging (all opens; all writes and closes; all renames) as ONE channel write and reads the
answers together: three round trips per job, whatever the number of files (the folders to
create go with the opens). Renames are only sent once every write succeeded, so a final name
never points at a partial file.

Nothing is written through a symbolic link someone planted: each file is first created under
a random temporary name with CREAT|EXCL (an existing name, link or not, fails the open), its
mode is set on the open handle (FSETSTAT, so the server's umask does not matter), and
posix-rename then replaces whatever is at the final name, a link included, without following
it. Folders are created with mode 0700.
"""

from __future__ import annotations

import errno
import posixpath
import secrets
import struct
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import PurePosixPath

import paramiko

from zbatch.model.jobs import FileToPut

# Packet types (draft-ietf-secsh-filexfer-02).
INIT, VERSION, OPEN, CLOSE, READ, WRITE, FSETSTAT, REMOVE, MKDIR = 1, 2, 3, 4, 5, 6, 10, 13, 14
REALPATH = 16
STATUS, HANDLE, DATA, NAME, EXTENDED = 101, 102, 103, 104, 200
# OPEN flags and attribute flags.
F_READ, F_WRITE, F_CREAT, F_TRUNC, F_EXCL = 0x1, 0x2, 0x8, 0x10, 0x20
ATTR_PERMISSIONS = 0x4
# STATUS codes.
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED = 0, 1, 2, 3
POSIX_RENAME = b"posix-rename@openssh.com"
CHUNK = 32768  # bytes per READ/WRITE: what every server accepts
MAX_PACKET = 256 * 1024  # OpenSSH's limit on any packet; more means a broken stream


Request = tuple[int, tuple[int | bytes | str, ...]]  # packet type, fields


class SftpError(OSError):
    """The server refused a request (a STATUS other than OK)."""


@dataclass(frozen=True)
class Answer:
    kind: int
    body: bytes

    def check(self, what: str) -> Answer:
        if self.kind == STATUS:
            code, message = _status(self.body)
            if code != OK:
                raise _error(code, message, what)
        return self

    def handle(self, what: str) -> bytes:
        self.check(what)
        if self.kind != HANDLE:
            raise SftpError(errno.EPROTO, f"{what}: expected a handle, got packet {self.kind}")
        return _string(self.body, 0)[0]


def _string(buf: bytes, at: int) -> tuple[bytes, int]:
    (size,) = struct.unpack_from(">I", buf, at)
    end = at + 4 + size
    if end > len(buf):
        raise SftpError(errno.EPROTO, "truncated sftp packet")
    return buf[at + 4 : end], end


def _status(body: bytes) -> tuple[int, str]:
    (code,) = struct.unpack_from(">I", body, 0)
    message = _string(body, 4)[0].decode(errors="replace") if len(body) >= 8 else ""
    return code, message


def _error(code: int, message: str, what: str) -> SftpError | FileNotFoundError | PermissionError:
    text = f"{what}: {message or 'sftp status ' + str(code)}"
    if code == NO_SUCH_FILE:
        return FileNotFoundError(errno.ENOENT, text)
    if code == PERMISSION_DENIED:
        return PermissionError(errno.EACCES, text)
    return SftpError(errno.EIO, text)


def _pack(*fields: int | bytes | str) -> bytes:
    out = bytearray()
    for field in fields:
        if isinstance(field, int):
            out += struct.pack(">I", field)
        else:
            data = field.encode() if isinstance(field, str) else field
            out += struct.pack(">I", len(data)) + data
    return bytes(out)


def temp_name(path: PurePosixPath) -> str:
    """A hidden name beside `path` that no one can predict (so no one can plant a link there)."""
    return str(path.parent / f".{path.name[:200]}.{secrets.token_hex(8)}.tmp")


def folder_requests(folders: Iterable[PurePosixPath]) -> list[Request]:
    """MKDIR (mode 0700) for every ancestor of each folder, in order, without "/"; a folder
    that exists already answers an error, which is ignored: it is kept as it is."""
    chain = dict.fromkeys(
        path for folder in folders for path in [*reversed(folder.parents), folder][1:]
    )
    return [(MKDIR, (str(path), ATTR_PERMISSIONS, 0o700)) for path in chain]


def ancestors(path: str) -> list[str]:
    """`path` and each folder above it, deepest first, down to "/"."""
    chain = [path]
    while chain[-1] != "/":
        chain.append(posixpath.dirname(chain[-1]) or "/")
    return chain


class SftpSession:
    """One sftp subsystem channel. Not thread-safe: its connection serialises callers."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self.channel = channel
        self._next = 1
        self._buf = bytearray()
        channel.invoke_subsystem("sftp")
        channel.sendall(struct.pack(">IBI", 5, INIT, 3))
        kind, _ = self._packet()
        if kind != VERSION:
            raise SftpError(errno.EPROTO, f"sftp server answered {kind} to INIT")

    @property
    def closed(self) -> bool:
        return bool(self.channel.closed or self.channel.eof_received)

    def close(self) -> None:
        self.channel.close()

    # -- operations ------------------------------------------------------------------------
    def put_files(self, files: Sequence[FileToPut], folders: Iterable[PurePosixPath] = ()) -> None:
        """Create `folders` (as `makedirs`, in the same round trip as the opens: the server
        handles requests in order), write each file to a temporary name, then rename it over
        the final one. Raises the first refusal after removing the temporary files."""
        temps = [temp_name(item.path) for item in files]
        mkdirs = folder_requests(folders)
        try:
            opens = self.exchange(
                [
                    *mkdirs,
                    *[
                        (OPEN, (temp, F_WRITE | F_CREAT | F_EXCL, ATTR_PERMISSIONS, item.mode))
                        for temp, item in zip(temps, files, strict=True)
                    ],
                ]
            )[len(mkdirs) :]
            handles: list[bytes | None] = []
            errors: list[OSError] = []
            for temp, answer in zip(temps, opens, strict=True):
                try:
                    handles.append(answer.handle(f"create {temp}"))
                except OSError as exc:
                    handles.append(None)
                    errors.append(exc)
            writes, targets = _write_requests(handles, temps, files)
            for answer, temp in zip(self.exchange(writes), targets, strict=True):
                try:
                    answer.check(f"write {temp}")
                except OSError as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
            renames = [
                (EXTENDED, (POSIX_RENAME, temp, str(item.path)))
                for temp, item in zip(temps, files, strict=True)
            ]
            for answer, item in zip(self.exchange(renames), files, strict=True):
                answer.check(f"rename to {item.path}")
        except OSError as exc:
            if isinstance(exc, TimeoutError):  # the stream's state is unknown: drop it
                raise
            # Best effort (the temp names are hidden); over a dropped link this fails too.
            with suppress(OSError, EOFError):
                self.exchange([(REMOVE, (temp,)) for temp in temps])
            raise

    def makedirs(self, folder: PurePosixPath) -> None:
        """mkdir -p in one round trip: every ancestor is asked for, in order, with mode 0700;
        only the folder itself must exist afterwards (a failure there is left for the write
        to report)."""
        self.exchange(folder_requests([folder]))

    def realpaths(self, paths: Sequence[str]) -> list[str]:
        """Each absolute path with its symbolic links resolved by the server, in ONE round trip.

        REALPATH needs the path to exist (OpenSSH lets only its last component be missing,
        and follows a dangling link there), so it is asked for every ancestor of every path at
        once; each path is the real path of its deepest ancestor that resolves, followed by the
        components below it as written (what `realpath -m` prints).
        """
        chains = [ancestors(posixpath.normpath(path)) for path in paths]
        asked = list(dict.fromkeys(p for chain in chains for p in chain))
        answers = dict(zip(asked, self.exchange([(REALPATH, (p,)) for p in asked]), strict=True))
        resolved = []
        for chain in chains:
            for ancestor in chain:
                real = _name(answers[ancestor])
                if real is not None:
                    rest = posixpath.relpath(chain[0], ancestor)
                    resolved.append(posixpath.normpath(posixpath.join(real, rest)))
                    break
            else:  # not even "/" resolved: the server is broken
                raise SftpError(errno.EPROTO, f"the server resolves no folder of {chain[0]}")
        return resolved

    def read(self, path: PurePosixPath) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        (opened,) = self.exchange([(OPEN, (str(path), F_READ, 0))])
        try:
            handle = opened.handle(f"read {path}")
        except FileNotFoundError:
            return None
        data = bytearray()
        try:
            while True:
                (answer,) = self.exchange([(READ, (handle, *_offset(len(data)), CHUNK))])
                if answer.kind == STATUS and _status(answer.body)[0] == EOF:
                    return bytes(data)
                answer.check(f"read {path}")
                data += _string(answer.body, 0)[0]
        finally:
            self.exchange([(CLOSE, (handle,))])

    # -- wire ------------------------------------------------------------------------------
    def exchange(self, requests: Sequence[Request]) -> list[Answer]:
        """Send all requests in one write; return their answers in order."""
        if not requests:
            return []
        numbers, out = [], bytearray()
        for kind, fields in requests:
            number, self._next = self._next, (self._next + 1) & 0xFFFFFFFF
            payload = bytes([kind]) + _pack(number, *fields)
            out += struct.pack(">I", len(payload)) + payload
            numbers.append(number)
        self.channel.sendall(bytes(out))
        answers = []
        for number in numbers:
            kind, body = self._packet()
            (got,) = struct.unpack_from(">I", body, 0)
            if got != number:  # answers come in order: anything else is a broken stream
                raise EOFError(f"sftp answer {got} where {number} was due")
            answers.append(Answer(kind, body[4:]))
        return answers

    def _packet(self) -> tuple[int, bytes]:
        while True:
            if len(self._buf) >= 4:
                (size,) = struct.unpack_from(">I", self._buf, 0)
                if not 1 <= size <= MAX_PACKET:
                    raise EOFError(f"sftp packet of {size} bytes: the stream is broken")
                if len(self._buf) >= 4 + size:
                    packet = bytes(self._buf[4 : 4 + size])
                    del self._buf[: 4 + size]
                    return packet[0], packet[1:]
            chunk = self.channel.recv(65536)
            if not chunk:
                raise EOFError("the sftp channel closed")
            self._buf += chunk


def _name(answer: Answer) -> str | None:
    """The first file name of a NAME answer (REALPATH's), or None for a refusal."""
    if answer.kind != NAME:
        return None
    (count,) = struct.unpack_from(">I", answer.body, 0)
    if count < 1:
        return None
    name = _string(answer.body, 4)[0].decode(errors="surrogateescape")
    return name if name.startswith("/") else None


def _write_requests(
    handles: Sequence[bytes | None], temps: Sequence[str], files: Sequence[FileToPut]
) -> tuple[list[Request], list[str]]:
    """Each opened file's mode, data and close, pipelined; and the temp name each answers for."""
    writes: list[Request] = []
    targets: list[str] = []
    for handle, temp, item in zip(handles, temps, files, strict=True):
        if handle is None:
            continue
        data = item.data.encode()
        # The exact mode whatever the server's umask (open's attributes pass it).
        writes.append((FSETSTAT, (handle, ATTR_PERMISSIONS, item.mode)))
        writes += [
            (WRITE, (handle, *_offset(at), data[at : at + CHUNK]))
            for at in range(0, len(data), CHUNK)
        ]
        writes.append((CLOSE, (handle,)))
        targets += [temp] * (len(writes) - len(targets))
    return writes, targets


def _offset(value: int) -> tuple[int, int]:
    """A uint64 offset as the two uint32 fields `_pack` writes."""
    return value >> 32, value & 0xFFFFFFFF
