"""A verbatim cryoem-services recipe (tests/data/upstream/cryoem-services) through the real
CLI and the dispatcher onto the local scheduler: `parameters.wrapper` is the recipe-wrapper
file's path, written there before the job starts, and `$RECIPEWRAP` in the commands is it.
Also: the dispatcher counts the unknown cluster keys a `warn` profile ignores."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ZbatchRun, wrapper_step
from tests.unit.prepare.test_cryoem_dialect import CLASS2D, class2d_values
from zbatch.clusters import cluster_for
from zbatch.model.message import start_messages, step_key
from zbatch.model.profiles import load_profile_file
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext
from zbatch.prepare.parameters import UNKNOWN_KEYS_LOGGED
from zbatch.service.dispatcher import Dispatcher, DispatcherConfig
from zbatch.service.ledger import Ledger
from zbatch.transport.embedded import EmbeddedTransport
from zbatch.transport.factory import TransportConfig

FIVE_KEYS = {"environment", "payload", "recipe", "recipe-path", "recipe-pointer"}


def cryoem_profile(make_profile: Any, **fields: Any) -> Path:
    # The upstream recipe sets PATH, which a site allows by name.
    path: Path = make_profile("cryoem-local", allowed_environment=["PATH"], **fields)
    return path


def param_args(class2d_dir: Path) -> list[str]:
    args = []
    for key, value in class2d_values(class2d_dir).items():
        args += ["--param", f"{key}={value}"]
    return args


def test_render_through_the_cli(tmp_path: Path, make_profile: Any, zbatch: ZbatchRun) -> None:
    """As a Slurm site renders it: every cluster key of the recipe is a directive."""
    class2d = tmp_path / "work" / "class2d"
    profile = cryoem_profile(make_profile, scheduler="slurm")
    result = zbatch("render", str(CLASS2D), "--profile", str(profile), *param_args(class2d))
    assert result.returncode == 0, result.stderr
    wrap = class2d / ".recipewrap"
    assert f'cryoemservices.wrap -w Class2D -r "{wrap}" -c' in result.stdout
    assert "$RECIPEWRAP" not in result.stdout
    lines = result.stdout.splitlines()
    for option in ("nodes=1", "mem=96000M", "gpus=1", "prefer=gpu_a100", "ntasks=1"):
        assert f"#SBATCH --{option}" in lines, option
    assert not wrap.exists(), "render stages nothing"


def test_submit_through_the_cli_writes_the_recipewrapper_there(
    tmp_path: Path, make_profile: Any, zbatch: ZbatchRun
) -> None:
    class2d = tmp_path / "work" / "class2d"
    profile = cryoem_profile(make_profile)
    args = ["submit", str(CLASS2D), "--profile", str(profile), "--json", *param_args(class2d)]
    result = zbatch(*args)
    assert result.returncode == 0, result.stderr
    wrap = class2d / ".recipewrap"
    body = json.loads(wrap.read_text())
    assert set(body) == FIVE_KEYS and body["recipe-pointer"] == 1
    assert body["recipe"]["1"]["parameters"]["wrapper"] == str(wrap)
    (script,) = class2d.glob("zbatch-*.sh")
    assert f'-r "{wrap}"' in script.read_text()


def dispatcher_for(profile_path: Path, tmp_path: Path) -> tuple[Dispatcher, EmbeddedTransport]:
    profile = load_profile_file(profile_path)
    config = TransportConfig("embedded", str(tmp_path / "queue.sqlite"))
    transport = EmbeddedTransport(config.db_path())
    dispatcher = Dispatcher(
        profile,
        cluster_for(profile),
        Ledger(),
        transport,
        JobContext(config.job_args()),
        DispatcherConfig(backoff_s=0.01, track=False),
    )
    return dispatcher, transport


def test_the_dispatcher_submits_the_class2d_step(tmp_path: Path, make_profile: Any) -> None:
    class2d = tmp_path / "work" / "class2d"
    dispatcher, transport = dispatcher_for(cryoem_profile(make_profile), tmp_path)
    recipe = Recipe.load(str(CLASS2D)).apply_parameters(class2d_values(class2d))
    message = start_messages(recipe)[0]
    transport.send_step(message)
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"submitted": 1}
    entry = dispatcher.ledger.get(step_key(message))
    wrap = class2d / ".recipewrap"
    assert entry is not None and entry.job_id and entry.message_path == str(wrap)
    assert set(json.loads(wrap.read_text())) == FIVE_KEYS


def unknown_key_samples(dispatcher: Dispatcher) -> dict[str, float]:
    text = dispatcher.metrics.render().decode("utf-8")
    return {
        s.labels["key"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "zbatch_unknown_cluster_keys"
        for s in f.samples
        if s.name.endswith("_total")
    }


def keyed_message(work: Path, **cluster: Any) -> Any:
    step = wrapper_step(["true"])
    step["parameters"]["workingdir"] = str(work)
    step["parameters"]["cluster"].update(cluster)
    return start_messages(Recipe.from_json({"1": step, "start": [[1, []]]}))[0]


def test_the_dispatcher_counts_keys_a_warn_profile_ignores(
    tmp_path: Path, make_profile: Any
) -> None:
    UNKNOWN_KEYS_LOGGED.clear()
    profile = make_profile("warn-keys", unknown_cluster_keys="warn")
    dispatcher, transport = dispatcher_for(profile, tmp_path)
    work = tmp_path / "work"
    transport.send_step(keyed_message(work / "a", transfer_input_files="x"))
    transport.send_step(keyed_message(work / "b", transfer_input_files="y", **{"bad\nkey": 1}))
    dispatcher.serve(threading.Event(), max_messages=2)
    assert dispatcher.outcomes == {"submitted": 2}
    assert unknown_key_samples(dispatcher) == {"transfer_input_files": 2, "other": 1}


def test_the_dispatcher_dead_letters_unknown_keys_by_default(
    tmp_path: Path, make_profile: Any
) -> None:
    dispatcher, transport = dispatcher_for(make_profile(), tmp_path)
    transport.send_step(keyed_message(tmp_path / "work" / "a", transfer_input_files="x"))
    dispatcher.serve(threading.Event(), max_messages=1)
    assert dispatcher.outcomes == {"dead-lettered": 1}
    assert unknown_key_samples(dispatcher) == {}
