"""Every `--json` of the command line: documented in docs/json.md, an object with its schema.

The list of commands comes from the CLI's own tree, so a `--json` added later without its
line in docs/json.md fails here; the outputs below are produced through the real `zbatch`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ZbatchRun, one_line_error, wrapper_step, write_recipe
from tests.unit.cli.test_grammar import PATHS, command_at

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "json.md").read_text()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JSON_PATHS = [
    p for p in PATHS if any("--json" in getattr(o, "opts", ()) for o in command_at(p).params)
]


def documented_schemas(command: str) -> list[str]:
    """The schemas the table of docs/json.md gives for `zbatch <command> --json`."""
    rows = [
        row.split(" | ")
        for row in DOCS.splitlines()
        if row.startswith(f"| `zbatch {command} -") and "--json" in row.split(" | ")[0]
    ]
    return [cells[1].strip("`") for cells in rows]


def test_the_tree_has_json_options() -> None:
    assert {("run",), ("submit",), ("status",), ("cancel",), ("dlq", "list")} <= set(JSON_PATHS)


@pytest.mark.parametrize("path", JSON_PATHS, ids=" ".join)
def test_every_json_option_is_documented(path: tuple[str, ...]) -> None:
    schemas = documented_schemas(" ".join(path))
    assert schemas, f"docs/json.md has no row for `zbatch {' '.join(path)} --json`"
    for schema in schemas:
        assert f"## `{schema}`" in DOCS or schema == "zbatch.jobs/1", schema


def test_run_json_lists_the_jobs_on_stdout_and_progress_on_stderr(
    make_profile: Any, zbatch: ZbatchRun
) -> None:
    done = zbatch(
        "run", str(EXAMPLES / "hello.json"), "-p", str(make_profile()), "-s", "who=json", "--json"
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["schema"] == "zbatch.jobs/1" in documented_schemas("run")
    assert [(j["step"], j["state"]) for j in data["jobs"]] == [(1, "succeeded"), (2, "succeeded")]
    assert "2 step(s) succeeded, 0 failed" in done.stderr


def test_run_json_of_a_failed_step_still_lists_it(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    recipe = {"1": wrapper_step(["sh", "-c", "exit 3"]), "start": [[1, {}]]}
    done = zbatch(
        "run", str(write_recipe(tmp_path / "r.json", recipe)), "-p", str(make_profile()), "--json"
    )
    assert done.returncode == 1
    (job,) = json.loads(done.stdout)["jobs"]
    assert (job["state"], job["exit_code"]) == ("failed", 3)


@pytest.mark.parametrize("command", ["run", "submit"])
def test_json_with_dry_run_is_refused(command: str, make_profile: Any, zbatch: ZbatchRun) -> None:
    refused = zbatch(
        command, str(EXAMPLES / "hello.json"), "-p", str(make_profile()), "-s", "who=x",
        "--dry-run", "--json",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "leave it out with --dry-run" in one_line_error(refused)


def test_brokered_submit_json_says_what_was_published(tmp_path: Path, zbatch: ZbatchRun) -> None:
    db = tmp_path / "q.sqlite"
    sent = zbatch(
        "submit", str(EXAMPLES / "hello.json"), "-s", "who=x",
        "--transport", "embedded", "--embedded-db", str(db), "--json",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    data = json.loads(sent.stdout)
    assert data["schema"] == "zbatch.published/1" in documented_schemas("submit")
    assert data["transport"] == "embedded"
    (message,) = data["messages"]
    assert (message["step"], message["queue"]) == (1, "cluster.submission")
    counted = zbatch(
        "dlq", "list", "--transport", "embedded", "--embedded-db", str(db),
        "--queue", "cluster.submission", "--queue", "other", "--queue", "other", "--json",
    )  # fmt: skip
    assert counted.returncode == 0, counted.stderr
    data = json.loads(counted.stdout)
    assert data["schema"] == "zbatch.dead-letter-counts/1" in documented_schemas("dlq list")
    assert data["queues"] == [
        {"queue": "cluster.submission", "dlq": "dlq.cluster.submission", "count": 0},
        {"queue": "other", "dlq": "dlq.other", "count": 0},
    ]


def test_submit_takes_only_the_common_transport_names(zbatch: ZbatchRun) -> None:
    refused = zbatch("submit", str(EXAMPLES / "hello.json"), "--transport", "direct")
    assert refused.returncode == 2
    assert "'direct' is not one of 'embedded', 'pika'" in refused.stderr
    waited = zbatch("submit", str(EXAMPLES / "hello.json"), "--transport", "embedded", "--wait")
    assert "--wait submits directly: leave out --transport" in one_line_error(waited)
