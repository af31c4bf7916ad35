"""A result record is written by the job, so what it says about a failure is checked: junk
in it is no reason and no exit code, never an error of the tracker or `status`."""

from __future__ import annotations

import json

import pytest

from zbatch.service.outcome import MAX_REASON_CHARS, ResultSummary, parse_result


def record(**fields: object) -> str:
    return json.dumps({"success": False, "reason": "it broke", "tool_exit_code": 3, **fields})


def test_a_failure_gives_its_reason_and_the_tools_exit_code() -> None:
    assert parse_result(record(), "r") == ResultSummary(False, "it broke", 3)


@pytest.mark.parametrize("code", [-1, True, 2**40, "3", 3.0, None])
def test_an_exit_code_that_is_not_one_is_dropped(code: object) -> None:
    assert parse_result(record(tool_exit_code=code), "r") == ResultSummary(False, "it broke")


@pytest.mark.parametrize("text", ["[]", "null", '{"success": "no"}', "{", "x" * 10])
def test_junk_is_no_record(text: str) -> None:
    assert parse_result(text, "r") is None


def test_a_reason_is_one_bounded_line() -> None:
    summary = parse_result(record(reason="a\n\tb  " + "c" * 10_000), "r")
    assert summary is not None and summary.reason.startswith("a b c")
    assert "\n" not in summary.reason and len(summary.reason) == MAX_REASON_CHARS
    assert parse_result(record(reason=["not", "text"]), "r") == ResultSummary(False, "", 3)
