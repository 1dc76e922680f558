"""A run killed mid-round (SIGKILL, as an OOM kill or power cut) resumes to the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys

import yaml

from conftest import tiny_tree
from semcon import simulation
from semcon.config import load_config


def rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def semcon(*args, env=None):
    return subprocess.run([sys.executable, "-m", "semcon", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_killed_run_resumes_to_the_same_pseudo_labels(tiny_llama_dir, tmp_path):
    tree = tiny_tree(str(tiny_llama_dir), rounds=3, eval={"generate": False, "energy": False})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tree))
    whole = tmp_path / "whole"
    simulation.run(load_config(config), whole)

    killed = tmp_path / "killed"
    crash = semcon("run", config, "--out", killed, env={"SEMCON_KILL_AT": "2:train"})  # after round 2's consensus
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert (killed / "pseudo_labels" / "round_02.jsonl").is_file()  # written before the kill, redone on resume
    assert not (killed / "summary.json").exists()

    done = semcon("resume", killed)
    assert done.returncode == 0, done.stderr[-2000:]
    for t in (1, 2, 3):
        name = f"pseudo_labels/round_{t:02d}.jsonl"
        assert (killed / name).read_text() == (whole / name).read_text()
    assert (killed / "ledger.jsonl").read_text() == (whole / "ledger.jsonl").read_text()
    metrics = rows(killed / "metrics.jsonl")
    assert [m["round"] for m in metrics if m["event"] == "round"] == [0, 1, 2, 3]
    assert [m["train_loss"] for m in metrics if m["event"] == "round"] == \
        [m["train_loss"] for m in rows(whole / "metrics.jsonl") if m["event"] == "round"]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["eval_after"] == json.loads((whole / "summary.json").read_text())["eval_after"]


def test_resume_of_a_finished_run_changes_nothing_it_recorded(tiny_llama_dir, tmp_path):
    cfg = load_config(tree=tiny_tree(str(tiny_llama_dir), eval={"generate": False, "energy": False}))
    first = simulation.run(cfg, tmp_path)
    ledger = (tmp_path / "ledger.jsonl").read_text()
    again = simulation.resume(tmp_path)
    assert (tmp_path / "ledger.jsonl").read_text() == ledger
    assert again["eval_after"] == first["eval_after"] and again["per_round"] == first["per_round"]
