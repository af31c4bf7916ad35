"""The SSH framing protocol without a network: lines built by `frame_command` are fed to a
local bash/sh exactly as the remote shell would get them, and `parse_reply` reads the result."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Collection, Sequence
from pathlib import Path

import pytest

from zbatch.connections.ssh import Reply, frame_command, parse_reply, shell_setup

TAG = "0123456789abcdef0123456789abcdef"


def tags(count: int) -> list[str]:
    return [f"{TAG[:-2]}{i:02d}" for i in range(count)]


def run_framed(
    commands: Sequence[Sequence[str]],
    shell: str = "bash",
    sweep: Collection[int] = (),
    env: dict[str, str] | None = None,
) -> list[Reply]:
    """Feed setup + framed commands to one shell on stdin, as SshConnection does remotely."""
    names = tags(len(commands))
    script = shell_setup("ready" + TAG) + b"".join(
        frame_command(argv, tag, i + 1, sweep=i in sweep)
        for i, (argv, tag) in enumerate(zip(commands, names, strict=True))
    )
    done = subprocess.run(
        [shell], input=script, capture_output=True, timeout=60, check=True, env=env
    )
    assert parse_reply(done.stdout, "ready" + TAG) == Reply(0, b"", b"")
    return [parse_reply(done.stdout, tag) for tag in names]


def reply(
    returncode: int,
    stdout: bytes,
    stderr: bytes,
    tag: str = TAG,
    junk: bytes = b"",
    raw: bool = False,
) -> bytes:
    """What the remote shell prints for one command: raw, or base64 wrapped like coreutils."""

    def encode(data: bytes) -> bytes:
        if not data:
            return b""
        if raw:
            return b"r" + data
        text = base64.b64encode(data)
        return b"b\n" + b"".join(text[i : i + 76] + b"\n" for i in range(0, len(text), 76))

    return (
        junk
        + f"\n{tag}:rc={returncode}\n".encode()
        + encode(stdout)
        + f"\n{tag}:err\n".encode()
        + encode(stderr)
        + f"\n{tag}:end\n".encode()
    )


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_arguments_reach_the_program_literally(tmp_path: Path, shell: str) -> None:
    canary = tmp_path / "canary"
    args = [
        "with space",
        "'single'",
        '"double"',
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"; touch {canary}",
        f"&& touch {canary} #",
        "line one\nline two\n",
        "",
        "*",
        "$HOME",
        "back\\slash",
        "ünïcödé",
    ]
    (result,) = run_framed([["printf", "%s\\0", *args]], shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(b"\0")[:-1] == [a.encode() for a in args]
    assert not canary.exists()


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_exit_codes_and_separate_streams(shell: str) -> None:
    results = run_framed(
        [
            ["true"],
            ["false"],
            ["sh", "-c", "echo out; echo err >&2; exit 42"],
            ["cd", "/"],  # a shell builtin is not a program: not found, like subprocess
            ["if"],  # a keyword is only a word; it must not swallow the following lines
            ["echo", "after"],
        ],
        shell,
    )
    assert [r.returncode for r in results] == [0, 1, 42, 127, 127, 0]
    assert (results[2].stdout, results[2].stderr) == (b"out\n", b"err\n")
    assert b"exec: cd: not found" in results[3].stderr
    assert results[5] == Reply(0, b"after\n", b"")


def test_output_cannot_break_the_framing(tmp_path: Path) -> None:
    # Markers of other tags in the output, every byte value, a NUL (base64 then), 5 MB.
    fakes = "".join(f"\n{tag}:end\n\n{tag}:rc=9\n{tag}:err\n" for tag in tags(5))
    hostile = fakes.encode() + bytes(range(256)) + b"no newline at the end"
    blob = tmp_path / "blob"
    blob.write_bytes(hostile)
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 20_000)  # 5 MB of every byte value
    results = run_framed(
        [
            ["cat", str(blob)],
            ["sh", "-c", f"cat {blob} >&2"],
            ["cat", str(big)],
            ["sh", "-c", "cat >/dev/null; echo stdin was empty"],  # never reads our script
            ["echo", "still in step"],
        ]
    )
    assert results[0] == Reply(0, hostile, b"")
    assert results[1] == Reply(0, b"", hostile)
    assert results[2].stdout == big.read_bytes()
    assert results[3].stdout == b"stdin was empty\n"
    assert results[4].stdout == b"still in step\n"


@pytest.mark.parametrize("raw", [False, True], ids=["base64", "raw"])
def test_parse_skips_junk_and_decodes_both_encodings(raw: bool) -> None:
    login_noise = b"Welcome! pyenv says hi\nno newline here"
    data = bytes(range(256)) * 3 + b"\n\n"
    want = Reply(3, data, b"oops\n")
    assert parse_reply(reply(3, data, b"oops\n", junk=login_noise, raw=raw), TAG) == want
    assert parse_reply(reply(0, b"", b"", raw=raw), TAG) == Reply(0, b"", b"")


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_text_output_travels_raw_from_bash_only(tmp_path: Path, shell: str) -> None:
    # Every byte but NUL, invalid UTF-8 included, trailing newlines kept, in a UTF-8 locale.
    data = bytes(range(1, 256)) * 3 + "ünï\n\n".encode()
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    names = tags(1)
    script = shell_setup("ready" + TAG) + frame_command(["cat", str(blob)], names[0], 1)
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8"}
    done = subprocess.run([shell], input=script, capture_output=True, check=True, env=env)
    assert parse_reply(done.stdout, names[0]) == Reply(0, data, b"")
    encoding = done.stdout.split(f"{names[0]}:rc=0\n".encode())[1][:1]
    assert encoding == (b"r" if shell == "bash" else b"b")


def test_parse_uses_only_its_own_tag() -> None:
    other = "f" * 32
    both = reply(1, b"old", b"", tag=other) + reply(0, b"new", b"")
    assert parse_reply(both, TAG) == Reply(0, b"new", b"")
    assert parse_reply(both, other) == Reply(1, b"old", b"")


@pytest.mark.parametrize(
    "buf",
    [
        reply(0, b"x", b"")[:-3],  # incomplete: no end marker yet
        reply(0, b"x", b"").replace(f"{TAG}:rc=0".encode(), f"{TAG}:rc=zero".encode()),
        reply(0, b"x", b"").replace(b"eA==", b"e!A="),  # not base64
        reply(0, b"x", b"").replace(f"\n{TAG}:err\n".encode(), b"\n"),
        reply(0, b"x", b"", raw=True).replace(b"rx", b"zx"),  # neither raw nor base64
    ],
    ids=["incomplete", "bad-rc", "bad-base64", "no-err-marker", "bad-encoding"],
)
def test_parse_rejects_mangled_replies(buf: bytes) -> None:
    with pytest.raises(ValueError, match="reply"):
        parse_reply(buf, TAG)


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "empty"), (["echo", "a\0b"], "NUL"), (["-rf"], "start with '-'")],
)
def test_frame_refuses_what_no_exec_can_run(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frame_command(argv, TAG, 1)


def test_frame_is_one_line_with_the_tag_and_no_unquoted_input() -> None:
    line = frame_command(["echo", "a\nb", "$(x)"], TAG, 7)
    assert line.endswith(b"\n") and line.count(b"\n") == 2  # the quoted newline, then the end
    assert b"'a\nb' '$(x)'" in line
    # The tag is only handed to the reply printer: the output files, which the command can
    # see through /proc/self/fd, are named by the sequence number.
    assert line.count(TAG.encode()) == 1 and b'"$d/7.o"' in line and b'"$d/7.e"' in line
    swept = frame_command(["true"], TAG, 1, sweep=True)
    assert not line.startswith(b"rm") and swept.startswith(b"rm")


def test_background_child_cannot_leak_into_the_next_command() -> None:
    results = run_framed(
        [
            ["sh", "-c", "(sleep 0.3; echo late; echo late >&2) & echo first"],
            ["sh", "-c", "sleep 0.6; echo second"],  # the child writes while this one runs
        ]
    )
    assert results[0] == Reply(0, b"first\n", b"")
    assert results[1] == Reply(0, b"second\n", b"")


def test_sweep_deletes_old_output_files(tmp_path: Path) -> None:
    listing = ["sh", "-c", 'cd "$TMPDIR"/zbatch-ssh.* && ls']
    results = run_framed(
        [["echo", "one"], ["echo", "two"], listing, listing],
        sweep={3},
        env={"TMPDIR": str(tmp_path), "PATH": os.environ["PATH"]},
    )
    assert results[2].stdout.split() == sorted(f"{n}.{x}".encode() for n in (1, 2, 3) for x in "eo")
    assert results[3].stdout.split() == [b"4.e", b"4.o"]
    assert list(tmp_path.iterdir()) == []  # the shell removed its folder on exit


def test_a_command_cannot_see_the_tag() -> None:
    # Raw output is only safe if the command cannot learn the tag to forge a marker.
    spy = "readlink /proc/self/fd/1 /proc/self/fd/2; env; tr '\\0' ' ' </proc/$PPID/cmdline"
    (result,) = run_framed([["sh", "-c", spy]])
    assert result.returncode == 0 and b"/1.o" in result.stdout
    assert TAG[:-2].encode() not in result.stdout + result.stderr
