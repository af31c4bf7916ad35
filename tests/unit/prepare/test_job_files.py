"""A prepared job names its step message file explicitly, wherever the step moved it."""

from __future__ import annotations

from pathlib import Path

from zbatch.model.message import start_messages
from zbatch.model.profiles import load_profile
from zbatch.model.recipe import Recipe
from zbatch.prepare.job_files import JobContext, prepare_job


def test_message_file_is_the_steps_recipewrapper_not_the_first_file(tmp_path: Path) -> None:
    wrap, recipe_file = tmp_path / "a" / "step.recipewrap", tmp_path / "a" / "0-recipe.json"
    recipe = Recipe.from_json(
        {
            "1": {
                "parameters": {
                    "workingdir": str(tmp_path / "w"),
                    # Named first, so a dict of files could list it before the message.
                    "recipefile": str(recipe_file),
                    "recipewrapper": str(wrap),
                    "cluster": {"commands": "cat $RECIPEWRAP"},
                }
            },
            "start": [[1, []]],
        }
    )
    profile = load_profile("local-commands").model_copy(update={"workdir_root": str(tmp_path)})
    job = prepare_job(start_messages(recipe)[0], profile, JobContext(transport_args=[]))
    assert job.message_path == wrap
    assert set(job.files) == {wrap, recipe_file}
    assert f"cat {wrap}" in job.script
