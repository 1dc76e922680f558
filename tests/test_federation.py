"""The round loop with client sampling: who trains, who is heard from, what is saved, on tiny models."""

import json

import pytest
from conftest import built_once, rows, tiny_tree

from semcon.config import load_config
from semcon.rounds.federation import cohort
from semcon.transport import simulation

NAMES = [f"c{i}" for i in range(10)]


def test_cohorts_are_drawn_from_the_seed_per_round():
    first = [cohort(NAMES, 3, seed=0, t=t) for t in range(6)]
    assert first == [cohort(NAMES, 3, seed=0, t=t) for t in range(6)]  # deterministic
    assert all(len(c) == 3 and c == [n for n in NAMES if n in c] for c in first)  # in config order
    assert len({tuple(c) for c in first}) > 1  # a new draw each round
    assert first != [cohort(NAMES, 3, seed=1, t=t) for t in range(6)]
    assert cohort(NAMES, None, seed=0, t=4) == NAMES


@pytest.fixture(scope="module")
def sampled_tree(tiny_llama_dir):
    """4 clients on 2 domains, 2 sampled per round, 2 rounds; no generation metrics (only the loop matters)."""
    return tiny_tree(str(tiny_llama_dir), rounds=2, clients_per_round=2,
                     clients={"count": 4, "model": str(tiny_llama_dir),
                              "data": [{"source": "wiki", "categories": ["Geography"]}, {"source": "gsm8k"}]})


@pytest.fixture(scope="module")
def consensus_run(sampled_tree, tmp_path_factory, worker_id):
    path = built_once(tmp_path_factory, worker_id, "sampled-run",
                      lambda out: simulation.run(load_config(tree=sampled_tree), out))
    return path, json.loads((path / "summary.json").read_text())


@pytest.mark.parametrize("method", ["semantic_consensus", "fedavg"])
def test_a_round_trains_its_cohort_and_the_next_hears_from_it(sampled_tree, consensus_run, method, tmp_path):
    cfg = load_config(tree={**sampled_tree, "method": method})
    if method == "semantic_consensus":
        tmp_path, summary = consensus_run
    else:
        summary = simulation.run(cfg, tmp_path)
    names = [c.name for c in cfg.clients]
    drawn = {t: cohort(names, 2, cfg.seed, t) for t in range(cfg.rounds + 1)}
    assert len(set(map(tuple, drawn.values()))) > 1  # the sample changes, so this checks something
    ledger = rows(tmp_path / "ledger.jsonl")
    for r in summary["per_round"]:
        t = r["round"]
        up = {x["client"] for x in ledger if x["round"] == t and x["direction"] == "up"}
        down = {x["client"] for x in ledger if x["round"] == t and x["direction"] == "down"
                and x["kind"] not in ("config", "public")}
        if t <= cfg.rounds:
            assert r["cohort"] == drawn[t] and sorted(r["train_loss"]) == sorted(drawn[t])
            assert down == (set(drawn[t]) if t else set())
        else:  # parameter averaging's final round delivers the average to every client
            assert down == set(names) and not r["train_loss"]
        assert up == (set(drawn[t - 1]) if t else set())  # those who trained last round answer (or upload)
        saved = {p.parent.name for p in (tmp_path / "checkpoints" / "clients").glob(f"*/round_{t:02d}.safetensors")}
        assert saved <= set(r["cohort"])  # an unsampled client's adapter did not change, so is not saved again
    if method == "semantic_consensus":
        labels = rows(tmp_path / "pseudo_labels" / "round_02.jsonl")
        assert {x["client"] for x in labels} <= set(drawn[1])
    else:
        assert len({tuple(v["wiki:Geography"].items()) for v in summary["eval_after"].values()}) == 1


def test_a_sampled_run_resumes_to_the_same_pseudo_labels(sampled_tree, consensus_run, tmp_path):
    """Resuming loads each client's adapter of the round it last trained in, not of the round before."""
    whole, summary = consensus_run
    simulation.run(load_config(tree={**sampled_tree, "rounds": 1}), tmp_path)
    # the cut run's config says 1 round: continue it as the 2-round run it is part of
    (tmp_path / "config.yaml").write_text((whole / "config.yaml").read_text())
    resumed = simulation.resume(tmp_path)
    for t in (1, 2):
        name = f"pseudo_labels/round_{t:02d}.jsonl"
        assert (tmp_path / name).read_text() == (whole / name).read_text()
    assert resumed["eval_after"] == summary["eval_after"]  # every adapter, trained last in round 0, 1 or 2
