"""Unknown `parameters.cluster` keys are named by messages: under `unknown_cluster_keys: warn`
hostile names (line breaks, escapes, megabytes, unicode, thousands of them) neither break the
log (one escaped, bounded line per key, once per process) nor the metrics (bounded labels)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zbatch.model.message import start_messages
from zbatch.model.profiles import Profile, load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext, prepare_job
from zbatch.prepare.parameters import UNKNOWN_KEYS_LOGGED
from zbatch.service.metrics import MAX_UNKNOWN_KEY_LABELS, DispatcherMetrics

HOSTILE_KEYS = [
    "x\n#SBATCH --uid=0",
    "x\r\nWARNING forged log line",
    "\x1b[2J\x1b[31mred",
    "a\u2028b\u2029c\x85d",
    "nul\x00key",
    "lone\ud800surrogate",
    "naïve",
    "\uff14",  # fullwidth digit
    "‮reversed",  # right-to-left override
    "k" * 2_000_000,
    "",
    " ",
    "$(touch /tmp/zbatch-canary-unknown-key)",
    "quote\"and'quote",
    "{class2d_dir}",
]


@pytest.fixture(autouse=True)
def fresh_log() -> Iterator[None]:
    UNKNOWN_KEYS_LOGGED.clear()
    yield
    UNKNOWN_KEYS_LOGGED.clear()


def warn_profile(root: Path) -> Profile:
    return load_profile("local-commands").model_copy(
        update={"workdir_root": str(root), "unknown_cluster_keys": "warn"}
    )


def prepare(root: Path, keys: list[str], metrics: DispatcherMetrics) -> str:
    node = {
        "parameters": {
            "workingdir": str(root / "step"),
            "wrapper": "generic",
            "cluster": {"time_limit": "0:05:00", **dict.fromkeys(keys, "v")},
        },
        "job_parameters": {"command": ["true"]},
    }
    message = start_messages(Recipe.from_json({"1": node, "start": [[1, []]]}))[0]
    context = JobContext(transport_args=[]).counting(metrics.count_unknown_cluster_key)
    return prepare_job(message, warn_profile(root), context).script


def test_hostile_key_names_neither_break_logs_nor_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = DispatcherMetrics()
    caplog.set_level(logging.WARNING, logger="zbatch.prepare.parameters")
    for _ in range(3):  # the same keys again: counted again, logged once
        script = prepare(tmp_path, HOSTILE_KEYS, metrics)
    records = [r for r in caplog.records if "ignoring unknown key" in r.getMessage()]
    assert len(records) == len(HOSTILE_KEYS)
    for record in records:
        text = record.getMessage()
        assert text.isprintable(), repr(text)  # no line break, escape or control character
        assert len(text) < 400
        assert "step 1 of recipe" in text
    for key in HOSTILE_KEYS:
        assert key[:40] not in script or key in ("", " ", "\uff14", "naïve")
    assert "#SBATCH --uid=0" not in script and "zbatch-canary" not in script
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode("utf-8"))}
    samples = [
        s for s in families["zbatch_unknown_cluster_keys"].samples if s.name.endswith("_total")
    ]
    # None of these is a short identifier: all are counted under "other", every time.
    assert {s.labels["key"] for s in samples} == {"other"}
    assert sum(s.value for s in samples) == 3 * len(HOSTILE_KEYS)


def test_label_values_are_bounded() -> None:
    metrics = DispatcherMetrics()
    for i in range(5 * MAX_UNKNOWN_KEY_LABELS):
        metrics.count_unknown_cluster_key(f"key_{i}")
    metrics.count_unknown_cluster_key("key_0")  # an early key keeps its label
    metrics.count_unknown_cluster_key("x" * 65)  # too long for a label
    text = metrics.render().decode("utf-8")
    samples = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "zbatch_unknown_cluster_keys"
        for s in f.samples
        if s.name.endswith("_total")
    ]
    labels = {s.labels["key"]: s.value for s in samples}
    assert len(labels) == MAX_UNKNOWN_KEY_LABELS + 1
    assert labels["key_0"] == 2
    assert labels["other"] == 5 * MAX_UNKNOWN_KEY_LABELS - MAX_UNKNOWN_KEY_LABELS + 1
    assert "key_60" not in labels


def test_thousands_of_distinct_keys_log_a_bounded_number_of_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = DispatcherMetrics()
    caplog.set_level(logging.WARNING, logger="zbatch.prepare.parameters")
    prepare(tmp_path, [f"k{i}" for i in range(3000)], metrics)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == UNKNOWN_KEYS_LOGGED.LIMIT + 1
    assert "further ones are ignored without a warning" in lines[-1]
