"""The environment of the commands zbatch runs for jobs, and therefore of the jobs themselves.

A dispatcher's environment holds what jobs must never see: `ZBATCH_RABBIT_URL` with the broker
password, `ZBATCH_RABBIT_CONF` and password-file settings, cloud and CI tokens, whatever its
service manager sets. `sbatch` exports its whole environment into the job by default and the
local scheduler starts jobs with its own, so every scheduler command (sbatch, squeue, qsub,
qacct, the local scheduler) is given only the variables named here, taken from the
dispatcher's environment. A job reaches the broker through a settings file named on its
command line (`--rabbit-conf`, see transport/factory.py), never through a variable.

Why each name passes:
- PATH: finds the scheduler's commands and, in the job, the site's tools (the dispatcher's
  PATH is the site's choice; a message can never set it, see safety.DENIED_ENV).
- HOME, USER, LOGNAME: who the job runs as; tools read their own settings from HOME.
- LANG, LANGUAGE, LC_*, TZ: text encoding and time zone, so output and logs read the same.
- TMPDIR: the site's scratch space.
- SLURM_CONF: which slurm.conf sbatch/squeue/scancel read when it is not the default one.
- SGE_ROOT, SGE_CELL, SGE_QMASTER_PORT, SGE_EXECD_PORT, SGE_CLUSTER_NAME: which Grid Engine
  cell qsub/qstat/qdel/qacct talk to.
- PYTHONPATH: the default job command is this interpreter (`python -m zbatch wrap`); wrappers
  installed on the dispatcher's PYTHONPATH must import in the job as they did at submission.
- ZBATCH_SEND_RETRY_S: how long `zbatch wrap` retries the broker before its outbox, in seconds
  (zbatch/injob/outbox.py; a bad value stops `zbatch wrap` before it starts the tool).
Everything else (SQUEUE_FORMAT, SBATCH_* and SLURM_TIME_FORMAT included, which would change
what the scheduler commands do or print) stays behind. DRMAA submits in-process without a job
environment, and an SSH connection's commands get the remote login's environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

PASSED = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
        "SLURM_CONF",
        "SGE_ROOT", "SGE_CELL", "SGE_QMASTER_PORT", "SGE_EXECD_PORT", "SGE_CLUSTER_NAME",
        "PYTHONPATH",
        "ZBATCH_SEND_RETRY_S",
    }
)  # fmt: skip
PASSED_PREFIXES = ("LC_",)


def passed(name: str) -> bool:
    return name in PASSED or name.startswith(PASSED_PREFIXES)


def scrubbed_environment(environ: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The allow-listed part of `environ` (default: this process's), plus `extra`."""
    source = os.environ if environ is None else environ
    return {**{k: v for k, v in source.items() if passed(k)}, **extra}
