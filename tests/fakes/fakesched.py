#!/usr/bin/env python3
"""Fake Slurm 22.05 and Son of Grid Engine 8.1.9 commands: one program, named by argv[0].

Called as sbatch, squeue, scontrol or scancel it is a Slurm cluster; as qsub, qstat, qdel or
qacct a Grid Engine one. It accepts the command lines the real tools accept for what zbatch
does (zbatch/schedulers/slurm.py and sge.py build them), refuses unknown options with an
error as the real tool does, and prints what the real tool prints, byte for byte where
tests/data/scheduler-output/ holds a capture. What zbatch never asks for is refused as "not
emulated" rather than half imitated.

The cluster is the folder the command was found in: its state is `fake-scheduler.json`
beside the command, guarded by `fake-scheduler.lock` (fcntl), so parallel calls are safe.
No variable names it, because zbatch gives scheduler commands an allow-listed environment
(zbatch/model/jobenv.py): PATH is what selects the fakes. Every call is appended to the
state. Jobs never run here: tests move them on (tests/fakes/__init__.py), and a finished
job's script really runs then, so its own EXIT trap writes the exit record zbatch reads.

Standard library only: the links in bin/ run it with whatever `python3` is first on PATH,
not the venv's (tests/fakes/__init__.py starts the same file with -S, for speed).
"""

from __future__ import annotations

import fcntl
import fnmatch
import grp
import json
import os
import pwd
import re
import shlex
import sys
import time
from contextlib import contextmanager

TYPE_CHECKING = False  # typing's import would cost every scheduler call ~2 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from os import PathLike
    from typing import Any

    Folder = str | PathLike[str]
    Job = dict[str, Any]
    State = dict[str, Any]
    # (short letter or "", takes an argument: "yes" | "no" | "optional")
    Spec = dict[str, tuple[str, str]]
    Names = dict[str, str]

STATE_NAME = "fake-scheduler.json"
LOCK_NAME = "fake-scheduler.lock"
SLURM_TOOLS = ("sbatch", "squeue", "scontrol", "scancel")
SGE_TOOLS = ("qsub", "qstat", "qdel", "qacct")
HOST = os.uname().nodename.split(".")[0] or "localhost"
NODE_MEMORY_MB = 3900  # the test machine's node: --mem above it is refused as Slurm does


class Reply(Exception):
    """What a command prints and its exit status; raised to stop where the real tool stops."""

    def __init__(self, rc: int = 0, stdout: str = "", stderr: str = "") -> None:
        super().__init__(stderr or stdout)
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


# --------------------------------------------------------------------------- state


def new_state(scheduler: str, first_id: int = 100) -> State:
    user = pwd.getpwuid(os.getuid())
    return {
        "scheduler": scheduler,
        "next_id": first_id,
        "jobs": {},
        "calls": [],
        "fail_next": {},
        "user": user.pw_name,
        "uid": user.pw_uid,
        "group": grp.getgrgid(os.getgid()).gr_name,
        "gid": os.getgid(),
        "home": user.pw_dir,
        "partitions": ["debug", "short"],
        "queues": ["all.q"],
        "parallel_environments": ["smp"],
    }


def create(folder: Folder, scheduler: str, first_id: int = 100) -> None:
    """A fresh, empty cluster whose state lives in `folder`."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, STATE_NAME), "w") as out:
        json.dump(new_state(scheduler, first_id), out)


@contextmanager
def locked(folder: Folder, write: bool = True) -> Iterator[State]:
    """The cluster's state under its lock; written back (atomically) when the block ends."""
    path = os.path.join(folder, STATE_NAME)
    if not os.path.exists(path):
        raise Reply(2, stderr=f"fake scheduler: no cluster at {folder} (no {STATE_NAME})\n")
    with open(os.path.join(folder, LOCK_NAME), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as source:
                state: State = json.load(source)
            yield state
            if write:
                tmp = os.path.join(folder, f".{STATE_NAME}.{os.getpid()}.tmp")
                with open(tmp, "w") as out:
                    json.dump(state, out)
                os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def escape(text: str) -> str:
    """XML text (xml.sax.saxutils.escape, whose import costs qstat a third of its time)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slurm_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else "Unknown"


def ctime(t: float | None) -> str:
    return time.asctime(time.localtime(t)) if t else "-/-"


def clock(seconds: float, days_dash: bool = True) -> str:
    """Slurm's secs2time_str: [D-]HH:MM:SS."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days and days_dash else text


# --------------------------------------------------------------------------- option parsing


class GnuOptions:
    """getopt_long as the Slurm tools use it: --name=value, --name value, -xVALUE, -x value,
    bundled flags; `permute` moves operands after the options (squeue), otherwise the first
    operand ends the options (sbatch: what follows is the script and its arguments)."""

    def __init__(self, tool: str, spec: Spec, permute: bool) -> None:
        self.tool, self.spec, self.permute = tool, spec, permute
        self.short = {letter: name for name, (letter, _) in spec.items() if letter}

    def parse(self, args: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
        self.args, self.i = args, 0
        options: list[tuple[str, str]] = []
        operands: list[str] = []
        while self.i < len(args):
            arg = self._next()
            if arg == "--":
                return options, operands + args[self.i :]
            if arg.startswith("--"):
                options.append(self._long(arg))
            elif arg.startswith("-") and len(arg) > 1:
                options.extend(self._short(arg))
            elif self.permute:
                operands.append(arg)
            else:
                return options, [arg, *args[self.i :]]
        return options, operands

    def _next(self) -> str:
        arg = self.args[self.i]
        self.i += 1
        return arg

    def _fail(self, message: str) -> Reply:
        return Reply(1, stderr=f"{self.tool}: {message}\n{_try(self.tool)}")

    def _long(self, arg: str) -> tuple[str, str]:
        name, eq, value = arg[2:].partition("=")
        if name not in self.spec:
            raise self._fail(f"unrecognized option '{arg}'")
        kind = self.spec[name][1]
        if kind == "no" and eq:
            raise self._fail(f"option '--{name}' doesn't allow an argument")
        if kind == "yes" and not eq:
            if self.i >= len(self.args):
                raise self._fail(f"option '--{name}' requires an argument")
            value = self._next()
        return name, value

    def _short(self, arg: str) -> list[tuple[str, str]]:
        found = []
        for j, letter in enumerate(arg[1:], start=2):
            if letter not in self.short:
                raise self._fail(f"invalid option -- '{letter}'")
            name = self.short[letter]
            kind = self.spec[name][1]
            if kind == "no":
                found.append((name, ""))
                continue
            value = arg[j:]
            if not value and kind == "yes":
                if self.i >= len(self.args):
                    raise self._fail(f"option requires an argument -- '{letter}'")
                value = self._next()
            found.append((name, value))
            break
        return found


def gnu_options(
    tool: str, args: list[str], spec: Spec, permute: bool
) -> tuple[list[tuple[str, str]], list[str]]:
    return GnuOptions(tool, spec, permute).parse(args)


def _try(tool: str) -> str:
    return f'Try "{tool} --help" for more information\n'


def not_emulated(tool: str, what: str) -> Reply:
    return Reply(2, stderr=f"{tool}: error: fake {tool}: {what} is not emulated\n")


# --------------------------------------------------------------------------- Slurm

SLURM_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
SLURM_CODES = {
    "PENDING": "PD", "RUNNING": "R", "COMPLETING": "CG", "COMPLETED": "CD", "FAILED": "F",
    "CANCELLED": "CA", "TIMEOUT": "TO", "OUT_OF_MEMORY": "OOM", "NODE_FAIL": "NF",
    "SUSPENDED": "S", "CONFIGURING": "CF", "PREEMPTED": "PR", "BOOT_FAIL": "BF",
    "DEADLINE": "DL", "REQUEUED": "RQ", "RESIZING": "RS", "REVOKED": "RV", "SIGNALING": "SI",
    "SPECIAL_EXIT": "SE", "STAGE_OUT": "SO", "STOPPED": "ST",
}  # fmt: skip

SBATCH_OPTIONS: Spec = {
    "job-name": ("J", "yes"), "output": ("o", "yes"), "error": ("e", "yes"),
    "chdir": ("D", "yes"), "comment": ("", "yes"), "partition": ("p", "yes"),
    "account": ("A", "yes"), "qos": ("q", "yes"), "cpus-per-task": ("c", "yes"),
    "ntasks": ("n", "yes"), "nodes": ("N", "yes"), "mem": ("", "yes"),
    "mem-per-cpu": ("", "yes"), "time": ("t", "yes"), "gpus": ("G", "yes"),
    "gres": ("", "yes"), "exclusive": ("", "optional"), "constraint": ("C", "yes"),
    "prefer": ("", "yes"), "array": ("a", "yes"), "hold": ("H", "no"),
    "parsable": ("", "no"), "quiet": ("Q", "no"), "export": ("", "yes"),
    "open-mode": ("", "yes"), "signal": ("", "yes"), "mail-type": ("", "yes"),
    "mail-user": ("", "yes"), "requeue": ("", "no"), "no-requeue": ("", "no"),
    "wrap": ("", "yes"), "dependency": ("d", "yes"), "nice": ("", "optional"),
}  # fmt: skip


def slurm_minutes(text: str) -> int | None:
    """--time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; None for UNLIMITED / infinite."""
    if text.lower() in ("unlimited", "infinite", "-1"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(text)
    days, a, b, c = match.groups()
    if days is not None:
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
    elif c is not None:
        hours, minutes, seconds = int(a), int(b), int(c)
    elif b is not None:
        hours, minutes, seconds = 0, int(a), int(b)
    else:
        hours, minutes, seconds = 0, int(a), 0
    total = int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    return max(total, 1)


def slurm_megabytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", text, re.IGNORECASE)
    if not match:
        raise ValueError(text)
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    return int(int(match.group(1)) * scale[match.group(2).upper()])


def batch_directives(script: str, prefix: str) -> list[str]:
    """Arguments of the `prefix` lines at the top of a script, up to its first command."""
    args: list[str] = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith(prefix):
            args.extend(shlex.split(stripped[len(prefix) :], comments=False))
    return args


def sbatch_request(args: list[str]) -> tuple[dict[str, str], str, str]:
    """The options in force (the command line over the script's #SBATCH lines), the script
    path and its text."""
    options, operands = gnu_options("sbatch", args, SBATCH_OPTIONS, permute=False)
    if not operands:
        raise not_emulated("sbatch", "a batch script read from standard input")
    path = operands[0]
    try:
        with open(path) as source:
            script = source.read()
    except OSError as exc:
        raise Reply(1, stderr=f"sbatch: error: Unable to open file {path}\n") from exc
    if not script.startswith("#!"):
        raise Reply(
            1,
            stderr="sbatch: error: This does not look like a batch script.  The first\n"
            "sbatch: error: line must start with #! followed by the path to an interpreter.\n"
            "sbatch: error: For instance: #!/bin/sh\n",
        )
    directives, extra = gnu_options(
        "sbatch", batch_directives(script, "#SBATCH"), SBATCH_OPTIONS, permute=True
    )
    if extra:
        message = f"Invalid directive found in batch script: {extra[0]}"
        raise Reply(1, stderr=f"sbatch: error: {message}\n")
    given = dict(directives)
    given.update(options)
    for refused in ("array", "wrap", "dependency", "signal"):
        if refused in given:
            raise not_emulated("sbatch", f"--{refused}")
    return given, path, script


def sbatch_resources(state: State, given: dict[str, str]) -> dict[str, Any]:
    """Partition, time limit, memory and CPUs, refused as slurmctld refuses them."""
    partition = given.get("partition", state["partitions"][0])
    if partition not in state["partitions"]:
        raise Reply(
            1,
            stderr=f"sbatch: error: invalid partition specified: {partition}\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
        )
    try:
        minutes = slurm_minutes(given["time"]) if "time" in given else None
    except ValueError:
        raise Reply(1, stderr="sbatch: error: Invalid --time specification\n") from None
    cpus = given.get("cpus-per-task", "1")
    if not cpus.isdigit() or int(cpus) < 1:
        message = f'Invalid numeric value "{cpus}" for --cpus-per-task.'
        raise Reply(1, stderr=f"sbatch: error: {message}\n")
    memory = None
    for key in ("mem", "mem-per-cpu"):
        if key in given:
            try:
                memory = (key, slurm_megabytes(given[key]))
            except ValueError:
                raise Reply(1, stderr=f"sbatch: error: Invalid --{key} specification\n") from None
    if memory and memory[1] * (int(cpus) if memory[0] == "mem-per-cpu" else 1) > NODE_MEMORY_MB:
        raise Reply(
            1,
            stderr="sbatch: error: Memory specification can not be satisfied\n"
            "sbatch: error: Batch job submission failed: Requested node configuration is "
            "not available\n",
        )
    return {"partition": partition, "time_limit_min": minutes, "cpus": int(cpus), "memory": memory}


def exported(export: str) -> dict[str, str]:
    """--export: ALL (the default), NONE, or names and NAME=value, optionally after ALL."""
    names = export.split(",")
    environment = dict(os.environ) if names[0] == "ALL" else {}
    for item in names[1:] if names[0] == "ALL" else names:
        key, eq, value = item.partition("=")
        if eq:
            environment[key] = value
        elif key != "NONE" and key in os.environ:
            environment[key] = os.environ[key]
    return environment


def sbatch(state: State, args: list[str]) -> Reply:
    given, path, script = sbatch_request(args)
    resources = sbatch_resources(state, given)
    job_id = str(state["next_id"])
    state["next_id"] += 1
    cwd = os.getcwd()
    state["jobs"][job_id] = {
        "id": job_id,
        "name": given.get("job-name", os.path.basename(path)),
        "script": os.path.abspath(path),
        "script_text": script,  # slurmctld keeps its own copy: slurmd runs that one
        "workdir": given.get("chdir", cwd),
        "submit_dir": cwd,
        "stdout": given.get("output", "slurm-%j.out"),
        "stderr": given.get("error", given.get("output", "slurm-%j.out")),
        "comment": given.get("comment"),
        "account": given.get("account"),
        "qos": given.get("qos"),
        **resources,
        "hold": "hold" in given,
        "env": exported(given.get("export", "ALL")),
        "state": "PENDING",
        "reason": "JobHeldUser" if "hold" in given else "None",
        "exit": [0, 0],
        "submit_time": time.time(),
        "start_time": None,
        "end_time": None,
        "known": True,  # False once purged from slurmctld's memory (MinJobAge)
    }
    if "parsable" in given:
        return Reply(0, f"{job_id}\n")
    return Reply(0, f"Submitted batch job {job_id}\n")


SQUEUE_OPTIONS: Spec = {
    "noheader": ("h", "no"), "array": ("r", "no"), "states": ("t", "yes"),
    "jobs": ("j", "optional"), "format": ("o", "yes"), "user": ("u", "yes"),
    "partition": ("p", "yes"), "all": ("a", "no"), "me": ("", "no"), "name": ("n", "yes"),
    "Format": ("O", "yes"), "iterate": ("i", "yes"), "long": ("l", "no"),
    "sort": ("S", "yes"),
}  # fmt: skip
SQUEUE_HEADERS = {
    "i": "JOBID", "A": "ARRAY_JOB_ID", "j": "NAME", "T": "STATE", "t": "ST", "r": "REASON",
    "k": "COMMENT", "u": "USER", "P": "PARTITION", "M": "TIME", "D": "NODES", "C": "CPUS",
    "N": "NODELIST", "R": "NODELIST(REASON)", "l": "TIME_LIMIT",
}  # fmt: skip


def squeue_fields(state: State, job: Job) -> dict[str, str]:
    """Every `-o` field squeue prints for a job, by its letter."""
    node = HOST if job["start_time"] else ""
    return {
        "i": job["id"], "A": job["id"], "j": job["name"], "T": job["state"],
        "t": SLURM_CODES[job["state"]], "r": job["reason"], "k": job["comment"] or "(null)",
        "u": state["user"], "P": job["partition"], "M": _squeue_time(job), "D": "1",
        "C": str(job["cpus"]), "N": node, "R": node or f"({job['reason']})", "l": _limit(job),
    }  # fmt: skip


SQUEUE_DEFAULT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"


def _squeue_time(job: Job) -> str:
    if not job["start_time"]:
        return "0:00"
    seconds = int((job["end_time"] or time.time()) - job["start_time"])
    days, rest = divmod(seconds, 86400)
    hours, minutes, secs = rest // 3600, rest % 3600 // 60, rest % 60
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _limit(job: Job) -> str:
    minutes = job["time_limit_min"]
    return "UNLIMITED" if minutes is None else clock(minutes * 60)


def _squeue_format(fmt: str) -> list[tuple[str, str, bool, int]]:
    """A format as (literal text, field letter, right-justified, width) pieces."""
    pieces: list[tuple[str, str, bool, int]] = []
    for match in re.finditer(r"([^%]*)(?:%(\.?)(\d*)([A-Za-z%]))?", fmt):
        literal, dot, width, letter = match.groups()
        if letter == "%":
            pieces.append((literal + "%", "", False, 0))
            continue
        if letter and letter not in SQUEUE_HEADERS:
            raise not_emulated("squeue", f"format field %{letter}")
        if literal or letter:
            pieces.append((literal, letter or "", dot == ".", int(width or 0)))
    return pieces


def _render(pieces: list[tuple[str, str, bool, int]], values: dict[str, str]) -> str:
    out = []
    for literal, letter, right, width in pieces:
        out.append(literal)
        if letter:
            text = values[letter]
            if width:
                text = text[:width].rjust(width) if right else text[:width].ljust(width)
            out.append(text)
    return "".join(out)


def _states(text: str) -> set[str]:
    wanted: set[str] = set()
    by_code = {code: name for name, code in SLURM_CODES.items()}
    for word in text.upper().split(","):
        if word == "ALL":
            return set(SLURM_CODES)
        name = by_code.get(word, word)
        if name not in SLURM_CODES:
            raise Reply(1, stderr=f"squeue: error: Invalid job state specified: {word}\n")
        wanted.add(name)
    return wanted


def squeue_request(args: list[str]) -> dict[str, str]:
    options, operands = gnu_options("squeue", args, SQUEUE_OPTIONS, permute=True)
    given: dict[str, str] = {}
    for name, value in options:
        if name in ("Format", "iterate", "long", "sort"):
            raise not_emulated("squeue", f"--{name}")
        given[name] = value
    if "jobs" in given and not given["jobs"] and operands:
        given["jobs"] = operands.pop(0)  # `-j 1,2`: squeue takes the next operand as the list
    if operands:
        raise Reply(1, stderr=f"squeue: error: Unrecognized option: {operands[0]}\n")
    for job_id in filter(None, given.get("jobs", "").split(",")):
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise Reply(1, stderr=f"squeue: error: Invalid job id: {job_id}\n")
    return given


def squeue_selects(state: State, job: Job, given: dict[str, str], states: set[str]) -> bool:
    """Does the job pass squeue's filters (states, user, partition, name)?"""
    users = given.get("user", str(state["user"])).split(",")
    partitions = given.get("partition", str(job["partition"])).split(",")
    names = given.get("name", str(job["name"])).split(",")
    return (
        job["state"] in states
        and bool({state["user"], str(state["uid"])} & set(users))
        and job["partition"] in partitions
        and job["name"] in names
    )


def squeue(state: State, args: list[str]) -> Reply:
    given = squeue_request(args)
    if given.get("jobs") and "states" not in given:
        raise not_emulated("squeue", "-j without -t (which states it then lists)")
    # Without -t: the jobs still queued or running (squeue's default).
    states = _states(given["states"]) if "states" in given else set(SLURM_CODES) - SLURM_FINAL
    pieces = _squeue_format(given.get("format", SQUEUE_DEFAULT))
    known = [j for j in state["jobs"].values() if j["known"]]
    if given.get("jobs"):
        wanted = given["jobs"].split(",")
        known = [j for j in known if j["id"] in wanted]
        if not known:
            raise Reply(1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    rows = sorted(
        (j for j in known if squeue_selects(state, j, given, states)),
        key=lambda j: (j["state"], int(j["id"])),
    )
    lines = [] if "noheader" in given else [_render(pieces, SQUEUE_HEADERS)]
    lines += [_render(pieces, squeue_fields(state, job)) for job in rows]
    return Reply(0, "".join(line + "\n" for line in lines))


SCONTROL_OPTIONS: Spec = {
    "oneliner": ("o", "no"),
    "details": ("d", "no"),
    "quiet": ("Q", "no"),
    "all": ("a", "no"),
}


def scontrol_lines(state: State, job: Job) -> list[str]:
    """`scontrol show job` of one job, as slurm_sprint_job_info (22.05) groups its fields."""
    running = job["state"] != "PENDING"
    end = job["end_time"]
    run = (end or time.time()) - job["start_time"] if job["start_time"] else 0
    memory = job["memory"]
    mem_key = "MinMemoryCPU" if not memory or memory[0] == "mem-per-cpu" else "MinMemoryNode"
    mem = f"{memory[1]}M" if memory else "256M"
    cpus = job["cpus"]
    code, signal = job["exit"]
    priority = 0 if job["hold"] else 4294901760 - int(job["id"])
    lines = [
        f"JobId={job['id']} JobName={job['name']}",
        f"UserId={state['user']}({state['uid']}) GroupId={state['group']}({state['gid']}) "
        "MCS_label=N/A",
        f"Priority={priority} Nice=0 Account={job['account'] or '(null)'} "
        f"QOS={job['qos'] or '(null)'}",
        f"JobState={job['state']} Reason={job['reason']} Dependency=(null)",
        f"Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode={code}:{signal}",
        f"RunTime={clock(run)} TimeLimit={_limit(job)} TimeMin=N/A",
        f"SubmitTime={slurm_time(job['submit_time'])} "
        f"EligibleTime={'Unknown' if job['hold'] else slurm_time(job['submit_time'])}",
        f"AccrueTime={'Unknown' if job['hold'] else slurm_time(job['submit_time'])}",
        f"StartTime={slurm_time(job['start_time'])} EndTime={slurm_time(end)} Deadline=N/A",
        f"SuspendTime=None SecsPreSuspend=0 LastSchedEval={slurm_time(job['submit_time'])} "
        "Scheduler=Main",
        f"Partition={job['partition']} AllocNode:Sid=localhost:{os.getppid()}",
        "ReqNodeList=(null) ExcNodeList=(null)",
        f"NodeList={HOST if running else ''}",
    ]
    if running:
        lines.append(f"BatchHost={HOST}")
    lines += [
        f"NumNodes=1 NumCPUs={cpus} NumTasks=1 CPUs/Task={cpus} ReqB:S:C:T=0:0:*:*",
        f"TRES=cpu={cpus},mem={mem},node=1,billing={cpus}",
        "Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=*",
        f"MinCPUsNode={cpus} {mem_key}={mem} MinTmpDiskNode=0",
        "Features=(null) DelayBoot=00:00:00",
        "OverSubscribe=YES Contiguous=0 Licenses=(null) Network=(null)",
        f"Command={job['script']}",
        f"WorkDir={job['workdir']}",
    ]
    if job["comment"]:
        lines.append(f"Comment={job['comment']} ")
    lines += [
        f"StdErr={slurm_path(state, job, job['stderr'])}",
        "StdIn=/dev/null",
        f"StdOut={slurm_path(state, job, job['stdout'])}",
        "Power=",
    ]
    return lines


def slurm_path(state: State, job: Job, pattern: str) -> str:
    """An --output/--error pattern made a path, as slurmd names the file."""
    replacements = {
        "j": job["id"], "A": job["id"], "a": "4294967294", "x": job["name"],
        "u": state["user"], "N": HOST, "n": "0", "%": "%",
    }  # fmt: skip
    text = re.sub(r"%(\d*)([jAaxuNn%])", lambda m: replacements[m.group(2)], pattern)
    return text if text.startswith("/") else os.path.join(job["workdir"], text)


def scontrol(state: State, args: list[str]) -> Reply:
    options, operands = gnu_options("scontrol", args, SCONTROL_OPTIONS, permute=True)
    oneliner = any(name == "oneliner" for name, _ in options)
    if not operands:
        raise not_emulated("scontrol", "the interactive mode")
    if operands[0] != "show":
        raise Reply(1, stderr=f"invalid keyword: {operands[0]}\n")
    if len(operands) < 2 or operands[1] not in ("job", "jobs"):
        raise not_emulated("scontrol", f"show {' '.join(operands[1:2])}")
    jobs = [j for j in state["jobs"].values() if j["known"]]
    if len(operands) > 2:
        jobs = [j for j in jobs if j["id"] == operands[2]]
        if not jobs:
            raise Reply(1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    elif not jobs:
        return Reply(0, "No jobs in the system\n")
    out = []
    for job in jobs:
        lines = scontrol_lines(state, job)
        out.append(" ".join(lines) + " \n" if oneliner else "\n   ".join(lines) + "\n\n")
    return Reply(0, "".join(out))


SCANCEL_OPTIONS: Spec = {
    "quiet": ("Q", "no"), "user": ("u", "yes"), "name": ("n", "yes"), "signal": ("s", "yes"),
    "verbose": ("v", "no"), "batch": ("b", "no"), "full": ("f", "no"),
}  # fmt: skip


def scancel(state: State, args: list[str]) -> Reply:
    options, operands = gnu_options("scancel", args, SCANCEL_OPTIONS, permute=True)
    given = dict(options)
    if "signal" in given:
        raise not_emulated("scancel", "--signal")
    errors = []
    targets: list[Job] = []
    for job_id in operands:
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise Reply(1, stderr=f"scancel: error: Invalid job id {job_id}\n")
        job = state["jobs"].get(job_id)
        if job is None or not job["known"]:
            errors.append(f"scancel: error: Kill job error on job id {job_id}: "
                          "Invalid job id specified\n")  # fmt: skip
        else:
            targets.append(job)
    if not operands:
        if "user" not in given and "name" not in given:
            raise Reply(1, stderr="scancel: error: No job identification provided\n")
        targets = [
            j for j in state["jobs"].values()
            if j["known"] and given.get("name", j["name"]) == j["name"]
        ]  # fmt: skip
    for job in targets:
        if job["state"] in SLURM_FINAL:
            continue  # already done: scancel says nothing (ESLURM_ALREADY_DONE is ignored)
        was_running = job["state"] == "RUNNING"
        job.update(state="CANCELLED", reason="None", end_time=time.time())
        job["exit"] = [0, 15 if was_running else 0]
    return Reply(1 if errors else 0, "", "" if "quiet" in given else "".join(errors))


# --------------------------------------------------------------------------- Grid Engine

SGE_USAGE = "usage: {tool} [options]\n"
QSUB_WITH_ARG = {
    "-N", "-o", "-e", "-wd", "-S", "-ac", "-dc", "-sc", "-q", "-P", "-l", "-t", "-A", "-j",
    "-M", "-m", "-v", "-hold_jid", "-r", "-now", "-p", "-js", "-a", "-b", "-shell", "-sync",
    "-R", "-i", "-ckpt", "-c", "-masterq", "-tc",
}  # fmt: skip
QSUB_FLAGS = {"-terse", "-notify", "-h", "-cwd", "-V", "-verify", "-clear"}
SGE_RESOURCES = {
    "h_rt", "s_rt", "h_cpu", "s_cpu", "h_vmem", "s_vmem", "m_mem_free", "mem_free",
    "h_data", "h_stack", "gpu", "exclusive", "arch", "hostname", "virtual_free",
}  # fmt: skip


def sge_invalid(tool: str, arg: str) -> Reply:
    return Reply(1, stderr=f'{SGE_USAGE.format(tool=tool)}invalid option argument "{arg}"\n')


def sge_seconds(text: str) -> int:
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise ValueError(text)
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds


def qsub_options(args: list[str], tool: str = "qsub") -> tuple[list[tuple[str, str]], list[str]]:
    """qsub's options in order (-pe takes two words); what follows them is the script."""
    options: list[tuple[str, str]] = []
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        arg = args[i]
        words = 2 if arg == "-pe" else 1 if arg in QSUB_WITH_ARG else 0
        if not words and arg not in QSUB_FLAGS:
            raise sge_invalid(tool, arg)
        if i + words >= len(args) and words:
            raise Reply(1, stderr=f"{tool}: ERROR! {arg} option must have argument\n")
        options.append((arg, " ".join(args[i + 1 : i + 1 + words])))
        i += 1 + words
    return options, args[i:]


def qsub_request(args: list[str]) -> tuple[list[tuple[str, str]], str, str]:
    """The options in force, the script's #$ lines first (the command line overrides
    them), the script path and its text."""
    options, rest = qsub_options(args)
    if not rest or rest[0] == "-":
        raise not_emulated("qsub", "a job script read from standard input")
    path = rest[0]
    try:
        with open(path) as source:
            script = source.read()
    except OSError as exc:
        raise Reply(
            1,
            stderr=f"Unable to read script file because of error: error opening "
            f"{path}: {exc.strerror}\n",
        ) from None
    directives, leftover = qsub_options(batch_directives(script, "#$"))
    if leftover:
        raise sge_invalid("qsub", leftover[0])
    for name, _ in [*directives, *options]:
        if name in ("-t", "-b", "-sync", "-i"):
            raise not_emulated("qsub", name)
    return [*directives, *options], path, script


def pairs(text: str) -> list[tuple[str, str, bool]]:
    """`a=1,b` as [("a", "1", True), ("b", "", False)]."""
    return [(k, v, bool(eq)) for k, eq, v in (item.partition("=") for item in text.split(","))]


def qsub_lists(options: list[tuple[str, str]]) -> tuple[Names, Names, Names, Names]:
    """The last value of each plain option, and the merged -l resources, job context
    (-ac, -sc, -dc) and -v variables."""
    given: dict[str, str] = {}
    resources: dict[str, str] = {}
    context: dict[str, str] = {}
    variables: dict[str, str] = {}
    for name, value in options:
        if name == "-l":
            resources.update((k, v) for k, v, _ in pairs(value))
        elif name in ("-ac", "-sc"):
            if name == "-sc":
                context.clear()
            context.update((k, v) for k, v, _ in pairs(value))
        elif name == "-dc":
            for key in value.split(","):
                context.pop(key, None)
        elif name == "-v":
            variables.update((k, v if eq else os.environ.get(k, "")) for k, v, eq in pairs(value))
        else:
            given[name] = value
    return given, resources, context, variables


def qsub_checks(state: State, given: dict[str, str], resources: dict[str, str]) -> int:
    """Refuse what sge_qmaster refuses; returns the job's slots."""
    unknown = [key for key in resources if key not in SGE_RESOURCES]
    if unknown:
        raise Reply(1, stderr=f'Unable to run job: unknown resource "{unknown[0]}".\nExiting.\n')
    queue = given.get("-q")
    if queue is not None and queue not in state["queues"]:
        raise Reply(
            1,
            stderr="Unable to run job: Job was rejected because job requests unknown queue "
            f'"{queue}"\nExiting.\n',
        )
    try:
        sge_seconds(resources.get("h_rt", "0"))
    except ValueError:
        raise Reply(
            1, stderr=f'Unable to run job: invalid time value "{resources["h_rt"]}".\nExiting.\n'
        ) from None
    pe, _, count = given.get("-pe", "").partition(" ")
    if pe and pe not in state["parallel_environments"]:
        raise Reply(
            1,
            stderr="Unable to run job: job rejected: the requested parallel environment "
            f'"{pe}" does not exist.\nExiting.\n',
        )
    return int(count) if count.isdigit() else 1


def qsub(state: State, args: list[str]) -> Reply:
    options, path, script = qsub_request(args)
    given, resources, context, variables = qsub_lists(options)
    slots = qsub_checks(state, given, resources)
    job_id = str(state["next_id"])
    state["next_id"] += 1
    cwd = os.getcwd()
    name = given.get("-N", os.path.basename(path))
    workdir = given["-wd"] if "-wd" in given else cwd if "-cwd" in given else state["home"]
    submitter = {k: os.environ.get(k, "") for k in ("HOME", "LOGNAME", "PATH", "SHELL", "TZ")}
    state["jobs"][job_id] = {
        "id": job_id,
        "name": name,
        "script": os.path.abspath(path),
        "script_text": script,  # sge_qmaster keeps its own copy (exec_file job_scripts/N)
        "workdir": workdir,
        "cwd_given": "-wd" in given or "-cwd" in given,
        "stdout": given.get("-o"),
        "stderr": given.get("-e"),
        "merge": given.get("-j", "n").lower() in ("y", "yes", "true"),
        "shell": given.get("-S", "/bin/sh"),
        "queue": given.get("-q", state["queues"][0]),
        "queue_given": "-q" in given,
        "project": given.get("-P"),
        "pe": given.get("-pe"),
        "slots": slots,
        "resources": resources,
        "context": context,
        "notify": "-notify" in given,
        "hold": "-h" in given,
        # A job gets a fresh environment: the submitter's only with -V, plus any -v.
        "env": {**(dict(os.environ) if "-V" in given else {}), **variables},
        "submit_env": submitter,
        "submit_dir": cwd,
        "state": "hqw" if "-h" in given else "qw",
        "submit_time": time.time(),
        "start_time": None,
        "end_time": None,
        "in_queue": True,
        "accounting": None,  # qacct's record once the job has ended (if it ever started)
    }
    if "-terse" in given:
        return Reply(0, f"{job_id}\n")
    return Reply(0, f'Your job {job_id} ("{name}") has been submitted\n')


def sge_path(state: State, job: Job, given: str | None, letter: str) -> str:
    """Where -o/-e sends a job's output: pseudo variables expanded, a folder gets the default
    name, no path gives <name>.<o|e><id> in the job's working folder (home without -wd)."""
    default = f"{job['name']}.{letter}{job['id']}"
    if not given:
        return os.path.join(job["workdir"], default)
    path = given.split(":", 1)[-1]
    for var, value in (
        ("$JOB_ID", job["id"]), ("$JOB_NAME", job["name"]), ("$HOME", state["home"]),
        ("$USER", state["user"]), ("$HOSTNAME", HOST), ("$TASK_ID", "undefined"),
    ):  # fmt: skip
        path = path.replace(var, value)
    if not path.startswith("/"):
        path = os.path.join(job["workdir"], path)
    return os.path.join(path, default) if os.path.isdir(path) else path


def qstat_options(args: list[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-xml", "-ext", "-r", "-t", "-urg", "-pri"):
            given[arg] = ""
        elif arg in ("-g", "-u", "-s", "-q", "-l", "-U", "-F", "-pe"):
            if i >= len(args):
                raise Reply(1, stderr=f"{SGE_USAGE.format(tool='qstat')}ERROR! {arg} option "
                            "must have argument\n")  # fmt: skip
            given[arg] = args[i]
            i += 1
        elif arg == "-j":
            given[arg] = args[i] if i < len(args) and not args[i].startswith("-") else ""
            i += 1 if given[arg] else 0
        else:
            raise sge_invalid("qstat", arg)
    return given


XML_HEAD = (
    "<?xml version='1.0'?>\n<job_info  xmlns:xsd=\"http://arc.liv.ac.uk/repos/darcs/sge/"
    'source/dist/util/resources/schemas/qstat/qstat.xsd">\n'
)


def qstat(state: State, args: list[str]) -> Reply:
    given = qstat_options(args)
    for unsupported in ("-ext", "-r", "-t", "-urg", "-pri", "-s", "-q", "-l", "-U", "-F", "-pe"):
        if unsupported in given:
            raise not_emulated("qstat", unsupported)
    if given.get("-g", "d") not in ("d",):
        raise not_emulated("qstat", f"-g {given['-g']}")
    queued = sorted(
        (j for j in state["jobs"].values() if j["in_queue"]), key=lambda j: int(j["id"])
    )
    if "-j" in given:
        return qstat_jobs(state, queued, given["-j"])
    if "-xml" not in given:
        raise not_emulated("qstat", "the plain (non -xml) listing")
    users = given.get("-u", str(state["user"])).split(",")
    mine = [j for j in queued if "*" in users or state["user"] in users]
    out = [XML_HEAD, "  <queue_info>\n"]
    for job in mine:
        if job["state"] not in ("qw", "hqw", "Eqw"):
            out.append(_xml_job(state, job, running=True))
    out.append("  </queue_info>\n  <job_info>\n")
    for job in mine:
        if job["state"] in ("qw", "hqw", "Eqw"):
            out.append(_xml_job(state, job, running=False))
    out.append("  </job_info>\n</job_info>\n")
    return Reply(0, "".join(out))


def _xml_job(state: State, job: Job, running: bool) -> str:
    when = job["start_time"] if running else job["submit_time"]
    tag = "JAT_start_time" if running else "JB_submission_time"
    queue = f"{job['queue']}@{HOST}" if running else ""
    prio = "0.00000" if job["state"].startswith("h") else "0.50000"
    return (
        f'    <job_list state="{"running" if running else "pending"}">\n'
        f"      <JB_job_number>{job['id']}</JB_job_number>\n"
        f"      <JAT_prio>{prio}</JAT_prio>\n"
        f"      <JB_name>{escape(job['name'])}</JB_name>\n"
        f"      <JB_owner>{escape(state['user'])}</JB_owner>\n"
        f"      <state>{job['state']}</state>\n"
        f"      <{tag}>{slurm_time(when)}</{tag}>\n"
        f"      <queue_name>{queue}</queue_name>\n"
        f"      <slots>{job['slots']}</slots>\n"
        "    </job_list>\n"
    )


def qstat_jobs(state: State, queued: list[Job], selection: str) -> Reply:
    """qstat -j: every job (of any user) whose number or name pattern is given; SGE prints
    "Following jobs do not exist" and exits 1 only when none matches (qstat.c)."""
    if not selection:
        return Reply(0, "scheduling info:            (Collecting of scheduler job information is "
                     "turned off)\n")  # fmt: skip
    words = selection.split(",")
    chosen = [
        j for j in queued
        if any(j["id"] == w if w[:1].isdigit() else fnmatch.fnmatchcase(j["name"], w)
               for w in words)
    ]  # fmt: skip
    if not chosen:
        return Reply(1, stderr="Following jobs do not exist: \n" + ", ".join(words) + "\n")
    return Reply(0, "".join(_qstat_j_block(state, job) for job in chosen))


def _row(key: str, value: str) -> str:
    return f"{key + ':':<28}{value}\n"


def _joined(pairs: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs.items())


def _qstat_j_block(state: State, job: Job) -> str:
    """One job of `qstat -j`, in cull_show_job's order; rows for unset fields are left out."""
    submit = job["submit_env"]
    pe, _, count = (job["pe"] or "").partition(" ")
    optional = {
        "cwd": job["workdir"] if job["cwd_given"] else "",
        "stderr_path_list": f"NONE:NONE:{job['stderr']}" if job["stderr"] else "",
        "merge": "y" if job["merge"] else "",
        "hard resource_list": _joined(job["resources"]),
    }
    later = {
        "stdout_path_list": f"NONE:NONE:{job['stdout']}" if job["stdout"] else "",
        "jobshare": "0",
        "hard_queue_list": job["queue"] if job["queue_given"] else "",
    }
    lines = [
        "==============================================================\n",
        _row("job_number", job["id"]),
        _row("exec_file", f"job_scripts/{job['id']}"),
        _row("submission_time", ctime(job["submit_time"])),
        _row("owner", state["user"]),
        _row("uid", str(state["uid"])),
        _row("group", state["group"]),
        _row("gid", str(state["gid"])),
        _row("sge_o_home", submit["HOME"]),
        _row("sge_o_log_name", submit["LOGNAME"] or state["user"]),
        _row("sge_o_path", submit["PATH"]),
        _row("sge_o_shell", submit["SHELL"] or "/bin/bash"),
        _row("sge_o_workdir", job["submit_dir"]),
        _row("sge_o_host", HOST),
        _row("account", "sge"),
        *(_row(key, value) for key, value in optional.items() if value),
        _row("mail_list", f"{state['user']}@{HOST}"),
        _row("notify", "TRUE" if job["notify"] else "FALSE"),
        _row("job_name", job["name"]),
        *(_row(key, value) for key, value in later.items() if value),
        _row("shell_list", f"NONE:{job['shell']}"),
        _row("env_list", _joined(job["env"])),
        _row("script_file", job["script"]),
        _row("project", job["project"]) if job["project"] else "",
        f"parallel environment:  {pe} range: {count}\n" if pe else "",
        _row("context", _joined(job["context"])) if job["context"] else "",
        "usage    1:                 cpu=00:00:00, mem=0.00000 GB s, io=0.00000 GB, "
        "vmem=N/A, maxvmem=N/A\n"
        if job["state"] == "r"
        else "",
        f"error reason    1:          {job.get('error', '')}\n" if job["state"][0] == "E" else "",
        "scheduling info:            (Collecting of scheduler job information is turned off)\n",
    ]
    return "".join(lines)


def qdel_targets(state: State, args: list[str]) -> list[str]:
    """Job ids from the command line (lists allowed); -u USER: all of their queued jobs."""
    targets: list[str] = []
    user = None
    words = iter(args)
    for arg in words:
        if arg == "-u":
            user = next(words, None)
            if user is None:
                raise Reply(1, stderr="qdel: ERROR! -u option must have argument\n")
        elif arg.startswith("-") and arg != "-f":
            raise sge_invalid("qdel", arg)
        elif arg != "-f":
            targets.extend(t for t in arg.split(",") if t)
    if user is not None and not targets:
        targets = [j["id"] for j in state["jobs"].values() if j["in_queue"]]
    if not targets:
        raise Reply(1, stderr="qdel: ERROR! no job id or user name given\n")
    return targets


def qdel(state: State, args: list[str]) -> Reply:
    out, err = [], []
    for job_id in qdel_targets(state, args):
        job = state["jobs"].get(job_id)
        if job is None or not job["in_queue"]:
            err.append(f'denied: job "{job_id}" does not exist\n')
        elif job["state"] == "r":
            out.append(f"{state['user']} has registered the job {job_id} for deletion\n")
            end(job, failed=100, exit_status=137)
        else:
            out.append(f"{state['user']} has deleted job {job_id}\n")
            job.update(in_queue=False, end_time=time.time())  # never ran: never accounted
    return Reply(1 if err else 0, "".join(out), "".join(err))


RU_COUNTS = (
    "ru_minflt", "ru_majflt", "ru_nswap", "ru_inblock", "ru_oublock", "ru_msgsnd", "ru_msgrcv",
    "ru_nsignals", "ru_nvcsw", "ru_nivcsw",
)  # fmt: skip
FAILED_TEXT = {
    0: "",
    28: "changing into working directory",
    37: "qmaster enforced h_rt, h_cpu, or h_vmem limit",
    100: "assumedly after job",
}
SIGNAL_NAMES = {1: "Hangup", 2: "Interrupt", 6: "Aborted", 9: "Killed", 15: "Terminated"}


def end(job: Job, failed: int, exit_status: int) -> None:
    """A Grid Engine job leaves the queue and gets its accounting record."""
    job.update(in_queue=False, end_time=time.time())
    job["accounting"] = {"failed": failed, "exit_status": exit_status}


def qacct_record(state: State, job: Job) -> str:
    acct = job["accounting"]
    failed, status = acct["failed"], acct["exit_status"]
    failed_text = FAILED_TEXT.get(failed, "")
    signal = SIGNAL_NAMES.get(status - 128, "") if status > 128 else ""
    category = []
    if job["resources"]:
        values = {
            k: str(sge_seconds(v)) if k in ("h_rt", "s_rt", "h_cpu", "s_cpu") else v
            for k, v in job["resources"].items()
        }
        category.append("-l " + ",".join(f"{k}={v}" for k, v in values.items()))
    if job["queue_given"]:
        category.append(f"-q {job['queue']}")
    if job["pe"]:
        pe, _, count = job["pe"].partition(" ")
        category.append(f"-pe {pe} {count}")
    wall = int(job["end_time"] - job["start_time"]) if job["start_time"] else 0

    def pad(key: str, value: object) -> str:
        return f"{key:<13}{value!s:<20}\n"

    def bare(key: str, value: object) -> str:
        return f"{key:<13}{value}\n"

    lines = [
        "==============================================================\n",
        pad("qname", job["queue"]),
        pad("hostname", HOST),
        pad("group", state["group"]),
        pad("owner", state["user"]),
        pad("project", job["project"] or "NONE"),
        pad("department", "defaultdepartment"),
        pad("jobname", job["name"]),
        pad("jobnumber", job["id"]),
        bare("taskid", "undefined"),
        pad("account", "sge"),
        pad("priority", 0),
        bare("qsub_time", ctime(job["submit_time"])),
        bare("start_time", ctime(job["start_time"])),
        bare("end_time", ctime(job["end_time"] if job["start_time"] else None)),
        pad("granted_pe", job["pe"].partition(" ")[0] if job["pe"] else "NONE"),
        pad("slots", job["slots"]),
        bare("failed", f"{failed:<4d}" + (f": {failed_text}" if failed_text else " ")),
        bare("exit_status", f"{status:<20d}" + (f" ({signal})" if signal else "")),
        bare("ru_wallclock", f"{wall}s"),
        bare("ru_utime", "0.000s"),
        bare("ru_stime", "0.000s"),
        bare("ru_maxrss", "0.000B"),
        bare("ru_ixrss", "0.000B"),
        bare("ru_ismrss", "0.000B"),
        bare("ru_idrss", "0.000B"),
        bare("ru_isrss", "0.000B"),
        *(pad(key, 0) for key in RU_COUNTS),
        bare("cpu", "0.000s"),
        bare("mem", "0.000Bs"),
        bare("io", "0.000B"),
        bare("iow", "0.000s"),
        bare("maxvmem", "0.000B"),
        bare("arid", "undefined"),
        bare("ar_sub_time", "undefined"),
        bare("category", " ".join(category) or "NONE"),
    ]
    return "".join(lines)


def qacct(state: State, args: list[str]) -> Reply:
    given: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-j", "-t", "-o", "-q", "-h", "-d", "-b", "-e", "-f"):
            if i >= len(args):
                raise Reply(1, stderr=f"qacct: ERROR! {arg} option must have argument\n")
            given[arg] = args[i]
            i += 1
        else:
            raise sge_invalid("qacct", arg)
    if "-j" not in given:
        raise not_emulated("qacct", "a summary without -j")
    if "-t" in given:
        raise not_emulated("qacct", "-t (array tasks)")
    wanted = given["-j"]
    records = [
        j for j in sorted(state["jobs"].values(), key=lambda j: int(j["id"]))
        if j["accounting"] and (j["id"] == wanted or fnmatch.fnmatchcase(j["name"], wanted))
    ]  # fmt: skip
    if not records:
        return Reply(1, stderr=f"error: job id {wanted} not found\n")
    return Reply(0, "".join(qacct_record(state, job) for job in records))


# --------------------------------------------------------------------------- lifecycle
# What the controller and the node do to a job; tests/fakes/__init__.py calls these under
# the lock (and runs the script itself, outside it).


class Refused(Exception):
    """A lifecycle step that does not apply to the job in its current state."""


def job_of(state: State, job_id: str) -> Job:
    job: Job | None = state["jobs"].get(job_id)
    if job is None:
        raise Refused(f"no job {job_id} was ever submitted to this cluster")
    return job


def queued(state: State, job: Job) -> bool:
    return bool(job["known"] if state["scheduler"] == "slurm" else job["in_queue"])


def is_running(state: State, job: Job) -> bool:
    return bool(job["state"] == ("RUNNING" if state["scheduler"] == "slurm" else "r"))


def start_job(state: State, job_id: str) -> None:
    """The scheduler dispatches a pending job: RUNNING / r; SGE puts a job whose working
    folder is missing in Eqw instead, where it stays (qstat-error-state.xml)."""
    job = job_of(state, job_id)
    pending = ("PENDING",) if state["scheduler"] == "slurm" else ("qw",)
    if not queued(state, job) or job["state"] not in pending:
        held = " (held)" if job.get("hold") else ""
        raise Refused(f"job {job_id} is {job['state']}{held}, not pending: cannot start it")
    if state["scheduler"] == "sge" and not os.path.isdir(job["workdir"]):
        job["state"] = "Eqw"
        job["error"] = f"can't chdir to {job['workdir']}: No such file or directory"
        return
    job.update(state="RUNNING" if state["scheduler"] == "slurm" else "r", start_time=time.time())
    if state["scheduler"] == "slurm":
        job["reason"] = "None"


def launch(state: State, folder: Folder, job_id: str) -> dict[str, Any]:
    """How the node runs a running job's batch script: the copy the scheduler took at
    submission (Slurm's slurm_script, SGE's job_scripts/N), its shell, folder, output files
    and environment (Slurm: the submitter's, exported; SGE: a fresh one unless -V)."""
    job = job_of(state, job_id)
    if not is_running(state, job):
        raise Refused(f"job {job_id} is {job['state']}, not running: start() it first")
    spool = os.path.join(folder, "spool", f"job{job_id}")
    os.makedirs(spool, exist_ok=True)
    script = os.path.join(spool, "slurm_script" if state["scheduler"] == "slurm" else "script")
    with open(script, "w") as out:
        out.write(job["script_text"])
    os.chmod(script, 0o700)
    if state["scheduler"] == "slurm":
        env = dict(job["env"])
        env.update(
            SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_JOB_NAME=job["name"],
            SLURM_JOB_PARTITION=job["partition"], SLURM_SUBMIT_DIR=job["submit_dir"],
            SLURM_SUBMIT_HOST=HOST, SLURM_JOB_USER=state["user"],
            SLURM_JOB_UID=str(state["uid"]), SLURM_CPUS_PER_TASK=str(job["cpus"]),
            SLURM_NNODES="1", SLURM_JOB_NODELIST=HOST, SLURM_NODELIST=HOST,
            SLURMD_NODENAME=HOST, SLURM_CLUSTER_NAME="fake", ENVIRONMENT="BATCH",
        )  # fmt: skip
        stdout = slurm_path(state, job, job["stdout"])
        stderr = slurm_path(state, job, job["stderr"])
        shell = "bash"
    else:
        submit = job["submit_env"]
        env = {
            "HOME": state["home"], "USER": state["user"], "LOGNAME": state["user"],
            "SHELL": job["shell"], "PATH": "/usr/local/bin:/bin:/usr/bin", "TMPDIR": "/tmp",
            "ENVIRONMENT": "BATCH", "JOB_ID": job_id, "JOB_NAME": job["name"],
            "JOB_SCRIPT": str(script), "REQUEST": job["name"], "QUEUE": job["queue"],
            "NSLOTS": str(job["slots"]), "NHOSTS": "1", "RESTARTED": "0",
            "SGE_TASK_ID": "undefined", "SGE_O_HOME": submit["HOME"],
            "SGE_O_HOST": HOST, "SGE_O_LOGNAME": submit["LOGNAME"], "SGE_O_PATH": submit["PATH"],
            "SGE_O_SHELL": submit["SHELL"], "SGE_O_WORKDIR": job["submit_dir"],
            "SGE_CWD_PATH": job["workdir"],
        }  # fmt: skip
        env.update(job["env"])
        stdout = sge_path(state, job, job["stdout"], "o")
        stderr = stdout if job["merge"] else sge_path(state, job, job["stderr"], "e")
        env.update(SGE_STDOUT_PATH=stdout, SGE_STDERR_PATH=stderr)
        shell = job["shell"]
    cwd, note = job["workdir"], ""
    if not os.path.isdir(cwd):  # slurmd: "couldn't chdir ... going to /tmp instead"
        note = f"slurmstepd: error: couldn't chdir to `{cwd}': No such file or directory: "
        note += "going to /tmp instead\n"
        cwd = "/tmp"
    return {
        "argv": [shell, str(script)], "env": env, "cwd": cwd, "stdout": stdout,
        "stderr": stderr, "note": note,
    }  # fmt: skip


def record_exit(state: State, job_id: str, returncode: int) -> None:
    """The batch script ended with `returncode` (negative: killed by that signal)."""
    job = job_of(state, job_id)
    signal = -returncode if returncode < 0 else 0
    if state["scheduler"] == "slurm":
        if signal:
            job.update(state="FAILED", reason="JobLaunchFailure", exit=[0, signal])
        elif returncode:
            job.update(state="FAILED", reason="NonZeroExitCode", exit=[returncode, 0])
        else:
            job.update(state="COMPLETED", reason="None", exit=[0, 0])
        job["end_time"] = time.time()
    elif signal:
        end(job, failed=100, exit_status=128 + signal)
    else:
        end(job, failed=0, exit_status=returncode)


def kill_job(state: State, job_id: str, signal: int = 9) -> None:
    """The batch script is killed by `signal` (an OOM killer, an admin): no EXIT trap runs."""
    job = job_of(state, job_id)
    if not is_running(state, job):
        raise Refused(f"job {job_id} is {job['state']}, not running: nothing to kill")
    record_exit(state, job_id, -signal)


def time_out_job(state: State, job_id: str) -> None:
    """The job outlives its time limit and the scheduler kills it (no EXIT trap runs)."""
    job = job_of(state, job_id)
    if not is_running(state, job):
        raise Refused(f"job {job_id} is {job['state']}, not running: it cannot time out")
    if state["scheduler"] == "slurm":
        job.update(state="TIMEOUT", reason="TimeLimit", exit=[0, 15], end_time=time.time())
    else:
        end(job, failed=37, exit_status=137)


def vanish_job(state: State, job_id: str) -> None:
    """The scheduler forgets the job without it ever reporting (controller state lost, node
    gone): no queue entry, no accounting, no exit record."""
    job = job_of(state, job_id)
    job["vanished"] = True
    if state["scheduler"] == "slurm":
        job["known"] = False
    else:
        job.update(in_queue=False, accounting=None)


def purge_job(state: State, job_id: str) -> None:
    """Slurm forgets an ended job after MinJobAge: squeue and scontrol no longer know it.
    An ended Grid Engine job is out of qstat already and stays in qacct: nothing changes."""
    job = job_of(state, job_id)
    if state["scheduler"] == "slurm":
        if job["state"] not in SLURM_FINAL:
            raise Refused(f"job {job_id} is {job['state']}: only ended jobs are purged")
        job["known"] = False
    elif job["in_queue"]:
        raise Refused(f"job {job_id} is {job['state']}: only ended jobs are purged")


# --------------------------------------------------------------------------- dispatch

TOOLS: dict[str, Callable[[State, list[str]], Reply]] = {
    "sbatch": sbatch, "squeue": squeue, "scontrol": scontrol, "scancel": scancel,
    "qsub": qsub, "qstat": qstat, "qdel": qdel, "qacct": qacct,
}  # fmt: skip


def invoke(folder: Folder, tool: str, args: list[str]) -> Reply:
    """One call of `tool`, recorded in the state, or the canned failure a test asked for."""
    with locked(folder) as state:
        kind = "slurm" if tool in SLURM_TOOLS else "sge"
        if kind != state["scheduler"]:
            return Reply(127, stderr=f"{tool}: command not found on this {state['scheduler']} "
                         "cluster\n")  # fmt: skip
        call: dict[str, Any] = {"tool": tool, "argv": [tool, *args], "time": time.time()}
        state["calls"].append(call)
        canned = state["fail_next"].get(tool) or []
        failure = canned.pop(0) if canned else None
        reply = None
        if failure is None or failure["after"]:
            try:
                reply = TOOLS[tool](state, args)
            except Reply as refused:
                reply = refused
        if failure is not None:
            reply = Reply(failure["rc"], failure["stdout"], failure["stderr"])
            call["canned"] = True
        assert reply is not None
        call["rc"] = reply.rc
        return reply


def main(argv: list[str]) -> int:
    tool = os.path.basename(argv[0])
    if tool not in TOOLS:
        sys.stderr.write(f"fakesched: called as {tool!r}; link it as one of {', '.join(TOOLS)}\n")
        return 2
    try:
        reply = invoke(os.path.dirname(os.path.abspath(argv[0])), tool, argv[1:])
    except Reply as broken:
        reply = broken
    sys.stdout.write(reply.stdout)
    sys.stderr.write(reply.stderr)
    return reply.rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
