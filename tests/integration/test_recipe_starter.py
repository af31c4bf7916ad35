"""`zbatch recipe-starter` takes zocalo.go's requests and starts the named recipes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zbatch.model.message import StepMessage
from zbatch.transport.base import REASON_HEADER
from zbatch.transport.embedded import EmbeddedTransport

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GO_HEADERS = {"zocalo.go.user": "gda2", "zocalo.go.host": "ws001"}


def starter(
    db: Path, recipe_dir: Path, count: int, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "zbatch",
            "recipe-starter",
            "--recipe-dir",
            str(recipe_dir),
            "--transport",
            "embedded",
            "--embedded-db",
            str(db),
            "--max-messages",
            str(count),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_named_and_custom_recipes_are_started(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(EXAMPLES / "hello.json", recipes / "hello.json")
    custom = {"1": {"queue": "custom.q", "parameters": {"dc": "{ispyb_dcid}"}}, "start": [[1, []]]}
    db = tmp_path / "q.sqlite"
    transport = EmbeddedTransport(db)
    request = {
        "recipes": ["hello"],
        "parameters": {"who": "zocalo.go", "ispyb_dcid": "42"},
        "custom_recipe": custom,
    }
    transport.send_json("processing_recipe", request, GO_HEADERS)
    done = starter(db, recipes, 1)
    assert done.returncode == 0, done.stderr
    hello = transport.receive("cluster.submission", 0)
    extra = transport.receive("custom.q", 0)
    assert hello is not None and extra is not None
    first, second = (StepMessage.from_body(d.body) for d in (hello, extra))
    assert first.recipe_id == second.recipe_id and first.recipe_id
    assert first.step["job_parameters"]["command"] == ["echo", "Hello from zocalo.go"]
    assert second.pointer == 4 and second.step["parameters"] == {"dc": "42"}
    assert transport.depth("processing_recipe") == 0


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [
        ({"recipes": ["../../etc/passwd"]}, "recipe name"),
        ({"recipes": ["missing"]}, "no recipe 'missing'"),
        ({"recipes": "hello"}, "'recipes' must be a list"),
        ({}, "names no recipe"),
        ({"custom_recipe": {"1": {"output": 9}, "start": [[1, []]]}}, "refers to node 9"),
    ],
)
def test_bad_requests_are_dead_lettered(tmp_path: Path, request_body: object, reason: str) -> None:
    db = tmp_path / "q.sqlite"
    transport = EmbeddedTransport(db)
    transport.send_json("processing_recipe", request_body, GO_HEADERS)
    transport.publish("processing_recipe", b"not json", GO_HEADERS)
    done = starter(db, EXAMPLES, 2)
    assert done.returncode == 0, done.stderr
    letters = [transport.receive("dlq.processing_recipe", 0) for _ in range(2)]
    assert all(letters)
    assert reason in letters[0].headers[REASON_HEADER]  # type: ignore[union-attr]
    assert "not valid JSON" in letters[1].headers[REASON_HEADER]  # type: ignore[union-attr]
    assert json.loads(letters[0].body) == request_body  # type: ignore[union-attr]
