"""Helpers for wrapper tests: a step message around job_parameters, stand-ins on PATH."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from zbatch.injob.tool_process import run_tool
from zbatch.model.message import StepMessage
from zbatch.wrapper import Outcome, RunContext, Wrapper

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO / "tests" / "standins"
EXAMPLE = REPO / "examples" / "xia2-fast_ep.json"


def context(job_parameters: dict[str, Any], payload: Any = None, cpus: int = 4) -> RunContext:
    """What `zbatch wrap` hands a wrapper for a one-node recipe with these job_parameters."""
    body = {
        "environment": {"ID": "wrapper-test"},
        "payload": payload,
        "recipe": {"1": {"queue": "q", "job_parameters": job_parameters}, "start": [[1, []]]},
        "recipe-path": [],
        "recipe-pointer": 1,
    }
    log = logging.LoggerAdapter(logging.getLogger("tests.wrappers"), {"recipe_ID": "test"})
    return RunContext(StepMessage.from_body(body), cpus, log)


def standin_env(**extra: str) -> dict[str, str]:
    """The environment a job sees with the stand-in tools first on PATH."""
    return {**os.environ, "PATH": f"{STANDINS}{os.pathsep}{os.environ['PATH']}", **extra}


def run(wrapper: Wrapper, **env: str) -> tuple[Path, Outcome]:
    """Build, run and collect as `zbatch wrap` does, with the stand-ins on PATH."""
    workdir = wrapper.working_directory()
    argv = wrapper.command(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_tool(argv, workdir, timeout_s=60, env=standin_env(**env))
    return workdir, wrapper.collect(workdir, result.exit_code)


def file_types(outcome: Outcome) -> dict[str, tuple[str, int | None]]:
    return {f.file_name: (f.file_type, f.importance_rank) for f in outcome.files}
