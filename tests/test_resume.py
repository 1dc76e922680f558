"""A run killed mid-round (SIGKILL, as an OOM kill or power cut) resumes to the uninterrupted result."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml
from conftest import cli, rows, tiny_tree

from semcon.config import load_config
from semcon.transport import simulation


def semcon(*args, env=None):
    return subprocess.run([sys.executable, "-m", "semcon", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_killed_run_resumes_to_the_same_pseudo_labels(tiny_llama_dir, tmp_path):
    tree = tiny_tree(str(tiny_llama_dir), rounds=2)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tree))
    whole = tmp_path / "whole"
    simulation.run(load_config(config), whole)

    killed = tmp_path / "killed"
    crash = semcon("run", config, "--out", killed, env={"SEMCON_KILL_AT": "2:train"})  # after the last round's consensus
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert (killed / "pseudo_labels" / "round_02.jsonl").is_file()  # written before the kill, redone on resume
    assert not (killed / "summary.json").exists()

    done = cli("resume", killed)  # in this process: only the kill needs a process of its own
    assert done.exit_code == 0, done.output[-2000:]
    for t in (1, 2):
        name = f"pseudo_labels/round_{t:02d}.jsonl"
        assert (killed / name).read_text() == (whole / name).read_text()
    assert (killed / "ledger.jsonl").read_text() == (whole / "ledger.jsonl").read_text()
    metrics = rows(killed / "metrics.jsonl")
    assert [m["round"] for m in metrics if m["event"] == "round"] == [0, 1, 2]
    assert [m["train_loss"] for m in metrics if m["event"] == "round"] == \
        [m["train_loss"] for m in rows(whole / "metrics.jsonl") if m["event"] == "round"]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["eval_after"] == json.loads((whole / "summary.json").read_text())["eval_after"]


def test_resume_of_a_finished_run_changes_nothing_it_recorded(tiny_llama_dir, tmp_path):
    cfg = load_config(tree=tiny_tree(str(tiny_llama_dir)))
    first = simulation.run(cfg, tmp_path)
    ledger = (tmp_path / "ledger.jsonl").read_text()
    again = simulation.resume(tmp_path)
    assert (tmp_path / "ledger.jsonl").read_text() == ledger
    assert again["eval_after"] == first["eval_after"] and again["per_round"] == first["per_round"]


# --- Torn writes: a crash can cut an appended row or (on some filesystems) a state file ----------------------

@pytest.fixture(scope="session")  # workers interleave modules: built once per worker
def finished(tiny_llama_dir, tmp_path_factory):
    """An uninterrupted 1-round run: state.json after round 1 (the last), state.prev.json after round 0."""
    out = tmp_path_factory.mktemp("finished")
    simulation.run(load_config(tree=tiny_tree(str(tiny_llama_dir))), out)
    return out


def crashed_after_round_0(finished, tmp_path):
    """The run as a crash right after round 0's checkpoint leaves it (round 1's files already written)."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    state = run / "checkpoints"
    (state / "state.prev.json").replace(state / "state.json")
    (run / "summary.json").unlink()
    return run


def same_as(run, finished):
    """The same files and results, wall times and memory aside (round 1 ran again)."""
    def measured(path):
        timing = ("seconds", "phase_peak_rss_gb", "peak_rss_gb")
        return [{k: v for k, v in r.items() if k not in timing} for r in rows(path) if r["event"] == "round"]

    assert (run / "ledger.jsonl").read_text() == (finished / "ledger.jsonl").read_text()
    assert (run / "pseudo_labels" / "round_01.jsonl").read_text() == \
        (finished / "pseudo_labels" / "round_01.jsonl").read_text()
    assert measured(run / "metrics.jsonl") == measured(finished / "metrics.jsonl")
    summary, reference = (json.loads((p / "summary.json").read_text()) for p in (run, finished))
    assert summary["eval_after"] == reference["eval_after"]


def test_rows_cut_mid_line_are_dropped_on_resume(finished, tmp_path):
    run = crashed_after_round_0(finished, tmp_path)
    for name in ("ledger.jsonl", "metrics.jsonl"):
        with open(run / name, "a") as f:
            f.write('{"round": 1, "client": "ge')
    (run / "pseudo_labels" / "round_02.jsonl").write_text('{"prompt_id": "p0')
    simulation.resume(run)
    same_as(run, finished)
    assert not (run / "pseudo_labels" / "round_02.jsonl").exists()


def test_a_half_written_state_falls_back_to_the_checkpoint_before(finished, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    state = run / "checkpoints" / "state.json"
    state.write_text(state.read_text()[: len(state.read_text()) // 2])
    simulation.resume(run)
    assert "state.json is damaged" in caplog.text and "resuming from the checkpoint before it" in caplog.text
    same_as(run, finished)


def test_damage_resume_cannot_repair_is_one_line_and_changes_nothing(finished, tmp_path):
    run = crashed_after_round_0(finished, tmp_path)
    ledger = run / "ledger.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text(lines[0] + '{"round": 1, "cli\n' + "".join(lines[1:]))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    done = cli("resume", run)
    assert done.exit_code == 2 and f"{ledger}:2: damaged row" in done.stderr, done.output[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    ledger.write_text("".join(lines))
    for name in ("state.json", "state.prev.json"):
        (run / "checkpoints" / name).write_text('{"next_rou')
    done = cli("resume", run)
    assert done.exit_code == 2 and "no checkpoint to resume from" in done.stderr, done.output[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1


def test_rewind_checks_the_adapters_it_needs_before_deleting_anything(finished, tmp_path):
    run = crashed_after_round_0(finished, tmp_path)
    for path in (run / "checkpoints" / "clients" / "math").glob("round_00.*"):
        path.unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(FileNotFoundError, match="no round-0 adapter of client 'math'"):
        simulation.resume(run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
