"""The in-job runner behind `zbatch wrap`: message in, tool run, results out.

The flow follows zocalo.wrap: `starting`, then (extra outputs, result files) `success` or
`failure`, then `completed`, each with `send_to` and no default channel (so a step whose
outputs are an unnamed list sends none of them). Unlike zocalo.wrap the exit code is
non-zero when the wrapper failed, so the scheduler's accounting tells the truth. Every
message is first written to an outbox file beside the result record, so results survive a
broker that is down.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zbatch.errors import ParameterError, ZbatchError
from zbatch.injob.heartbeat import END, ERROR, PROCESSING, Heartbeat, task_name
from zbatch.injob.outbox import Outbox, retry_window_s
from zbatch.injob.tool_process import run_tool
from zbatch.model import safejson, safety
from zbatch.model.jobs import atomic_write, outbox_path, result_record_path
from zbatch.model.message import StepMessage, internal_reason
from zbatch.transport.base import Transport
from zbatch.wrapper import Outcome, RunContext, Wrapper, load_wrapper

log = logging.getLogger(__name__)

STARTING_WINDOW_S = 10.0
EXIT_FAILED = 1
EXIT_CANCELLED = 143


def allocated_cpus() -> int:
    """The cpus the scheduler gave the job; 1 (with a warning) when it says nothing usable.

    The variables may come from a step's environment, so junk ("²", "", "-1", 400 digits)
    must not stop the job: it is ignored, with a warning.
    """
    for var in ("SLURM_CPUS_PER_TASK", "NSLOTS", "ZBATCH_CPUS"):
        if var not in os.environ:
            continue
        try:
            return safety.parse_int(os.environ[var], var, minimum=1)
        except ParameterError as exc:
            log.warning("ignoring %s: %s", var, exc)
    return 1


def load_message(path: Path) -> StepMessage:
    data = safejson.load_file(path, kind="recipe wrapper")
    return StepMessage.from_body(data, source=str(path))


def failure_reason(exc: ZbatchError | OSError, argv: list[str]) -> str:
    """One line for the user: a tool that is not installed says so, not `[Errno 2] ...`."""
    if isinstance(exc, FileNotFoundError) and argv and exc.filename == argv[0]:
        return f"{argv[0]}: command not found (is it installed and on PATH?)"
    return str(exc)


def job_exit_code(success: bool, tool_exit_code: int, stopped_by: str) -> int:
    """0 on success; else the tool's own exit code, so the job's exit record and the
    scheduler's accounting show it (1 when the tool never ran or exited 0 yet failed)."""
    if success:
        return 0
    if stopped_by in ("SIGTERM", "SIGINT"):
        return EXIT_CANCELLED
    return tool_exit_code if 0 < tool_exit_code < 256 else EXIT_FAILED


@dataclass
class WrapRun:
    wrapper: Wrapper
    record_path: Path
    outcome: Outcome | None = None

    def build(self) -> tuple[Path, list[str]]:
        workdir = self.wrapper.confined_working_directory()  # inside the profile's root
        return workdir, self.wrapper.command(workdir)

    def execute(self, outbox: Outbox, heartbeat: Heartbeat) -> int:
        started = time.time()
        outbox.add("starting", "Starting processing")
        # Don't hold the tool back for a broker outage: whatever is unsent goes at the end.
        outbox.flush(window_s=STARTING_WINDOW_S)
        argv: list[str] = []
        exit_code = -1
        stopped_by = ""
        try:
            workdir, argv = self.build()
            workdir = self.wrapper.create_directory(workdir)
            self.wrapper.prepare(workdir)
            heartbeat.set(PROCESSING)
            run = run_tool(argv, workdir, self.wrapper.timeout_s())
            exit_code, stopped_by = run.exit_code, run.stopped_by
            outcome = self.wrapper.collect(workdir, exit_code)
            if stopped_by:
                outcome = dataclasses.replace(
                    outcome, success=False, reason=f"stopped by {stopped_by}"
                )
            if outcome.success:
                outcome.summary.setdefault("stdout", run.stdout_tail)
        except (ZbatchError, OSError) as exc:
            outcome = Outcome(False, failure_reason(exc, argv))
        except Exception as exc:  # a wrapper's defect still ends in failure + completed
            log.exception("wrapper %s failed with an internal error", self.wrapper.name)
            outcome = Outcome(False, internal_reason(exc))
        heartbeat.set(END if outcome.success else ERROR)
        queue_outcome(outbox, outcome)
        sent = outbox.flush()
        self.write_record(outcome, argv, exit_code, started, sent, stopped_by)
        self.outcome = outcome
        return job_exit_code(outcome.success, exit_code, stopped_by)

    def write_record(
        self,
        outcome: Outcome,
        argv: list[str],
        exit_code: int,
        started: float,
        sent: bool,
        stopped_by: str,
    ) -> None:
        record = {
            "wrapper": self.wrapper.name,
            "success": outcome.success,
            "reason": outcome.reason,
            "tool_exit_code": exit_code,
            "command": argv,
            "started": started,
            "ended": time.time(),
            "stopped_by": stopped_by,
            "summary": outcome.summary,
            "files": [f.to_json() for f in outcome.files],
            "results_sent": sent,
        }
        atomic_write(self.record_path, json.dumps(record, indent=2, default=str))


def queue_outcome(outbox: Outbox, outcome: Outcome) -> None:
    for channel, payload in outcome.extra_outputs.items():
        outbox.add(channel, payload)
    for result in outcome.files:
        outbox.add("result-individual-file", result.to_json())
    if outcome.files:
        outbox.add("result-all-files", {"filelist": [f.full_path for f in outcome.files]})
    if outcome.success:
        summary: dict[str, Any] = {
            "status": "Finished processing",
            **outcome.summary,
            "files": [f.full_path for f in outcome.files],
        }
        outbox.add("success", summary)
    else:
        outbox.add("failure", outcome.reason or "Processing failed")
    outbox.add("completed", "Finished processing")


def load(name: str, recipewrapper: Path, workdir_root: str | None) -> tuple[StepMessage, Wrapper]:
    """The step message and wrapper `name` set up for it (ZbatchError when either is bad)."""
    message = load_message(recipewrapper)
    context = RunContext(
        message,
        allocated_cpus(),
        logging.LoggerAdapter(log, {"recipe_ID": message.recipe_id}),
        workdir_root,
    )
    return message, load_wrapper(name)(context)


def wrap(
    name: str,
    recipewrapper: Path,
    make_transport: Callable[[], Transport],
    workdir_root: str | None = None,
) -> tuple[int, str]:
    """Run wrapper `name` on the message in `recipewrapper`; (exit code, one-line summary:
    the failure's reason when it failed). `workdir_root` (from the profile) confines the
    tool's folders and result files."""
    retry_window_s()  # a bad setting fails now, not when the results are to be sent
    message, wrapper = load(name, recipewrapper, workdir_root)  # bad input: one error line
    log.info("Starting wrapper %s with recipewrapper file %s", name, recipewrapper)
    record_path = Path(result_record_path(str(recipewrapper)))
    run = WrapRun(wrapper, record_path)
    heartbeat = Heartbeat(make_transport, task_name(name, message.step))
    heartbeat.start()
    try:
        outbox = Outbox(Path(outbox_path(str(recipewrapper))), message, make_transport)
        log.info("Setup complete")
        code = run.execute(outbox, heartbeat)
    finally:
        heartbeat.stop()
    log.info("Wrapper %s finished (exit code %d); result record %s", name, code, record_path)
    if code == 0:
        return code, f"wrapper {name} succeeded; result record {record_path}"
    reason = " ".join(run.outcome.reason.split()) if run.outcome is not None else ""
    return code, f"wrapper {name} failed (exit code {code}): {reason or 'no reason given'}"


def dry_run(
    name: str, recipewrapper: Path, workdir_root: str | None = None
) -> tuple[Path, list[str]]:
    """The working directory and command line wrapper `name` would run; nothing is run."""
    _, wrapper = load(name, recipewrapper, workdir_root)
    return WrapRun(wrapper, Path()).build()
