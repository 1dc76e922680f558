"""Tests of semcon.rounds.tracking: metrics rows as scalars, mirrored to TensorBoard and W&B (offline) by a real run."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import rows

from semcon.config import ConfigError, load_config
from semcon.rounds.tracking import WandB, scalars


def test_scalars_of_a_round_row_and_an_eval_row():
    row = {"event": "round", "round": 2, "cohort": ["a"], "bytes_up": 10, "seconds": {"train": 1.5},
           "train_loss": {"a": [3.0, 2.0, 1.0]}, "failed": {"b": "gone"}, "accepted": ["a"], "ok": True}
    assert sorted(scalars(row, last_round=3)) == [
        ("bytes_up", 10.0, 2), ("seconds/train", 1.5, 2),
        ("train_loss/a", 1.0, 8), ("train_loss/a", 2.0, 7), ("train_loss/a", 3.0, 6)]
    evaluation = {"event": "eval", "stage": "after", "client": "a", "metrics": {"wiki": {"bpb": 0.9, "nll": 2.0}}}
    assert list(scalars(evaluation, last_round=3)) == [("eval_after/a/wiki/bpb", 0.9, 3),
                                                       ("eval_after/a/wiki/nll", 2.0, 3)]
    assert next(scalars(evaluation | {"stage": "before"}, 3))[2] == 0


def expected(run) -> list[tuple[str, float, int]]:
    """Every scalar the run's metrics.jsonl holds."""
    last = load_config(run / "config.yaml").rounds
    return [s for row in rows(run / "metrics.jsonl") for s in scalars(row, last)]


def test_tensorboard_holds_every_number_of_metrics_jsonl(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    want = expected(tracked_run)
    assert {"bytes_up", "seconds/train", "train_loss/geo", "mean_agreement", "eval_after/math/gsm8k/bpb"} <= \
        {tag for tag, _, _ in want}
    assert len(logged) == len({(tag, step) for tag, _, step in want})
    for tag, value, step in want:
        assert logged[tag, step] == pytest.approx(value, rel=1e-6, abs=1e-6), tag


def test_wandb_offline_run_holds_the_rows(tracked_run):
    """The offline run file (W&B's record log, which may repeat records) holds each scalar's key and JSON value."""
    (run_file,) = (tracked_run / "wandb").glob("offline-run-*/run-*.wandb")
    assert run_file.name == f"run-{(tracked_run / 'run_id').read_text().strip()}.wandb"
    data = run_file.read_bytes()
    want: dict[str, list[float]] = {}
    for tag, value, _ in expected(tracked_run):
        want.setdefault(tag, []).append(value)
    for tag, values in want.items():
        name = tag.encode()  # a history item: the key's length and the key, then its value as JSON
        key = b"\x12" + bytes([len(name)]) + name + b"\x82\x01"
        found, at = [], data.find(key)
        while at >= 0:
            start = at + len(key) + 1
            found.append(json.loads(data[start:start + data[start - 1]]))
            at = data.find(key, start)
        assert all(any(f == pytest.approx(v, rel=1e-6) for f in found) for v in values), (tag, found, values)


def test_wandb_not_installed_is_one_line(tmp_path, monkeypatch, tiny_llama_dir):
    from conftest import tiny_tree

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"log: wandb is not installed \(pip install wandb\)"):
        WandB(tmp_path, load_config(tree=tiny_tree(str(tiny_llama_dir))), "abc")


def test_an_unknown_tracker_is_a_config_error(tiny_llama_dir):
    from conftest import tiny_tree

    with pytest.raises(ConfigError, match=r"log.0: Input should be 'tensorboard' or 'wandb'"):
        load_config(tree=tiny_tree(str(tiny_llama_dir), log=["mlflow"]))
