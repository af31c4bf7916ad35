"""Legacy raw qsub arguments mapped onto a JobSpec: a step's `cluster_submission_parameters`
or `cluster.qsub_submission_parameters`.

Old DLS recipes carry strings such as `-N name -pe smp 16-20 -l mfree=4G -l h_rt=6:00:00`.
Known options are translated (and so work on Slurm too); anything else is refused unless the
profile sets `allow_raw_scheduler_args`, and even then each token must match a strict pattern.
"""

from __future__ import annotations

from typing import Any

from zbatch.errors import ParameterError
from zbatch.model import safety
from zbatch.model.profiles import Profile
from zbatch.model.units import parse_duration, parse_memory_mb

_PER_SLOT_MEMORY = ("mfree", "h_vmem", "m_mem_free", "mem_free")


def _take(tokens: list[str], index: int, option: str, where: str) -> str:
    if index >= len(tokens):
        raise ParameterError(f"{where}: {option} needs a value")
    return tokens[index]


def _resource(request: str, out: dict[str, Any], where: str, exclusive: str) -> bool:
    key, _, value = request.partition("=")
    if key == "h_rt":
        out["time_limit_s"] = parse_duration(value, f"{where}: -l h_rt")
    elif key in _PER_SLOT_MEMORY:
        out["memory_per_cpu_mb"] = parse_memory_mb(value, f"{where}: -l {key}")
    elif key in ("gpus", "gpu"):
        out["gpus"] = safety.parse_int(value, f"{where}: -l {key}")
    elif key in ("exclusive", exclusive):  # SGE's usual name, or the site's (profile)
        out["exclusive"] = True
    else:
        return False
    return True


def translate_qsub_args(
    tokens: list[str], profile: Profile, where: str, key: str = "cluster_submission_parameters"
) -> dict[str, Any]:
    """`tokens` (from the step's parameter `key`) as JobSpec fields; `raw` keeps the rest."""
    given = f"{where}: {key}"
    out: dict[str, Any] = {}
    raw: list[str] = []
    i = 0
    while i < len(tokens):
        option = tokens[i]
        if option == "-N":
            out["name"] = safety.check(
                safety.NAME, _take(tokens, i + 1, option, given), f"{where}: -N"
            )
            i += 2
        elif option == "-P":
            out["account"] = safety.check(
                safety.NAME, _take(tokens, i + 1, option, given), f"{where}: -P"
            )
            i += 2
        elif option == "-pe":
            slots = _take(tokens, i + 2, option, given).split("-")[0]
            out["cpus"] = safety.parse_int(slots, f"{where}: -pe slots", minimum=1)
            i += 3
        elif option == "-l" and _resource(
            _take(tokens, i + 1, option, given), out, where, profile.resources.sge_exclusive
        ):
            i += 2
        else:
            if not profile.allow_raw_scheduler_args:
                raise ParameterError(
                    f"{given} option {option!r} has no zbatch "
                    f"equivalent and profile {profile.name!r} does not allow raw scheduler "
                    "arguments (allow_raw_scheduler_args)"
                )
            raw.append(safety.check(safety.RAW_ARG, option, f"{where}: raw scheduler argument"))
            i += 1
    if raw:
        out["raw"] = [" ".join(raw)]
    return out
