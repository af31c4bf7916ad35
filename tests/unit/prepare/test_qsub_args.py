"""Raw qsub arguments in a step: `cluster_submission_parameters` (dlstbx's SGE era) and
`cluster.qsub_submission_parameters` (still in some recipes) are read the same way, once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zbatch.errors import ParameterError
from zbatch.model.jobs import JobSpec
from zbatch.model.message import start_messages
from zbatch.model.profiles import Profile, load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.parameters import read_step
from zbatch.prepare.qsub_args import translate_qsub_args

LEGACY = Path(__file__).resolve().parents[2] / "data" / "recipes" / "legacy-sge.json"
QSUB = "-N fast_ep -pe smp 4 -l mfree=2G -l h_rt=2:00:00"


def profile() -> Profile:
    return load_profile("sge-local").model_copy(update={"workdir_root": "/dls"})


def spec_for(parameters: dict[str, Any], cluster: dict[str, Any] | None = None) -> JobSpec:
    data = json.loads(LEGACY.read_text())
    params = {
        k: v for k, v in data["1"]["parameters"].items() if k != "cluster_submission_parameters"
    }
    data["1"]["parameters"] = {**params, **parameters}
    if cluster is not None:  # a dict `cluster` replaces the legacy cluster name
        data["1"]["parameters"]["cluster"] = cluster
    message = start_messages(Recipe.from_json(data), {"ID": "qsub-0001"})[0]
    return read_step(message, profile(), resolve=None)


def test_qsub_submission_parameters_is_read_like_cluster_submission_parameters() -> None:
    legacy = spec_for({"cluster_submission_parameters": QSUB})
    modern = spec_for({}, cluster={"qsub_submission_parameters": QSUB})
    for spec in (legacy, modern):
        assert (spec.name, spec.cpus, spec.memory_per_cpu_mb, spec.time_limit_s) == (
            "fast_ep",
            4,
            2048,
            7200,
        )


def test_both_spellings_at_once_are_refused() -> None:
    with pytest.raises(ParameterError, match="give the qsub arguments once"):
        spec_for(
            {"cluster_submission_parameters": QSUB}, cluster={"qsub_submission_parameters": QSUB}
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-V", r"cluster\.qsub_submission_parameters option '-V' has no zbatch equivalent"),
        ("-N", r"cluster\.qsub_submission_parameters: -N needs a value"),
        ("-N 'x", r"cluster\.qsub_submission_parameters: No closing quotation"),
        ("-N a\n#$ -l h_rt=0", r"cluster\.qsub_submission_parameters"),
        (["-N", "x"], r"cluster\.qsub_submission_parameters"),
    ],
)
def test_bad_qsub_submission_parameters_name_the_key(value: object, expected: str) -> None:
    with pytest.raises(ParameterError, match=expected):
        spec_for({}, cluster={"qsub_submission_parameters": value})


@pytest.mark.parametrize("name", ["exclusive", "excl"])
def test_the_sites_exclusive_resource_is_read_as_exclusive(name: str) -> None:
    site = profile().model_copy(
        update={"resources": profile().resources.model_copy(update={"sge_exclusive": "excl"})}
    )
    tokens = ["-l", f"{name}=true"]
    assert translate_qsub_args(tokens, site, "step 1") == {"exclusive": True}
