"""The run directory: what an overwrite leaves behind."""

from conftest import tiny_tree

from semcon.config import load_config
from semcon.data import Prompt
from semcon.rounds.rundir import RunDir, kind_of


def test_a_new_run_over_a_flower_run_leaves_no_flower_marker(tmp_path):
    """``semcon resume`` takes the Flower branch when ``flower.json`` is there: a run that replaced a Flower
    run in the same directory must not leave it behind."""
    cfg = load_config(tree=tiny_tree("smollm2-135m"))
    run = RunDir.create(tmp_path / "r", cfg)
    (run.path / "flower.json").write_text("{}")
    (run.path / "notes.txt").write_text("mine")
    RunDir.create(run.path, cfg, overwrite=True)
    assert not (run.path / "flower.json").exists() and (run.path / "notes.txt").read_text() == "mine"
    assert kind_of(run.path) == "run"


def test_the_public_prompts_are_written_once_and_read_back(tmp_path):
    run = RunDir.create(tmp_path / "r", load_config(tree=tiny_tree("smollm2-135m")))
    prompts = [Prompt("p0000", "Capital of France?", "wiki", reference="Paris."), Prompt("p0001", "A fruit?", "x")]
    assert run.public_prompts(lambda: prompts) == prompts
    assert run.public_prompts(lambda: []) == prompts  # a resumed session answers the same prompts
