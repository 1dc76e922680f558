"""`semcon verify`, `semcon replay` and `semcon ablate` on tiny runs, and the oracles' refusal on Flower."""

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import cli, one_line_error, rows, tiny_tree

from semcon.consensus import Ballot
from semcon.rounds.rundir import jsonl
from semcon.studies.replay import same_label


def edited(run, tmp_path, name, index, field="text"):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "adapters"))
    path = copy / name
    table = rows(path)
    table[index][field] = table[index][field] + " (edited)"
    path.write_text(jsonl(table))
    return copy


def test_a_clean_run_verifies(kept_run):
    result = cli("verify", kept_run)
    assert result.exit_code == 0, result.output
    assert "follow from the kept uploads" in result.output


def test_an_edited_pseudo_label_is_caught_and_named(kept_run, tmp_path):
    result = cli("verify", edited(kept_run, tmp_path, "pseudo_labels/round_01.jsonl", 1))
    label = rows(kept_run / "pseudo_labels/round_01.jsonl")[1]
    assert result.exit_code == 1 and f"round 1, prompt {label['prompt_id']}" in result.output, result.output
    assert "(text edited)" in result.output


def test_an_edited_upload_is_caught_and_named(kept_run, tmp_path):
    result = cli("verify", edited(kept_run, tmp_path, "uploads/round_01.jsonl", 2))
    assert result.exit_code == 1 and "round 1: the kept upload of client 'geo'" in result.output, result.output


def test_verify_refuses_a_run_without_uploads(tracked_run, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(tracked_run, copy, ignore=shutil.ignore_patterns("uploads", "checkpoints", "adapters"))
    one_line_error(cli("verify", copy), "no uploads/round_NN.jsonl")


def test_replay_tabulates_every_rule_and_names_the_bounds(kept_run, tmp_path):
    out = tmp_path / "replay"
    result = cli("replay", kept_run, "--rule", "medoid", "--rule", "gated:signal=knn,gate=0.6", "--rule",
                 "weighted_medoid:signal=gain", "--rule", "oracle_expert", "--rule", "oracle_reference",
                 "--set", "consensus.competence_norm=raw", "--attack", "geo", "--out", out)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "replay.json").read_text())
    by_rule = {r["rule"]: r for r in table}
    assert len(table) == 5 and {r["round"] for r in table} == {1}
    assert by_rule["oracle_reference"]["bound"] and by_rule["oracle_reference"]["quality"]["consensus"]["rouge_l"] == 1.0
    assert by_rule["oracle_reference"]["label_share"]["reference"] == 1.0
    assert all(v == 1.0 for v in by_rule["oracle_expert"]["expert_share"].values())
    assert all(r["attackers"] == ["geo"] and r["attacks"] == {"geo": "inflate_competence"} for r in table)
    text = (out / "replay.md").read_text()
    assert "(bound)" in text and "geo (inflate_competence)" in text and "| attacker share |" in text
    # replayed as the run ran (math attacked in the run itself), the gated rule gives the run's own labels
    same = cli("replay", kept_run, "--rule", "gated", "--out", tmp_path / "same")
    labelled = json.loads((tmp_path / "same" / "replay.json").read_text())[0]["labelled"]
    assert same.exit_code == 0 and labelled == len(rows(kept_run / "pseudo_labels/round_01.jsonl")) / 6


def confident(valid, confidence, *, gate):
    """A user's own rule, loaded by name as ``test_replay:confident``: the medoid among the answers whose mean
    token probability is at least ``consensus.gate``; every answer votes."""
    sure = valid & (np.exp(np.nan_to_num(confidence, nan=-np.inf)) >= gate)
    return Ballot(eligible=sure, weights=valid.astype(float))


def test_replay_takes_a_users_rule_and_tells_it_from_settings(kept_run, tmp_path):
    out = tmp_path / "own"
    result = cli("replay", kept_run, "--rule", "test_replay:confident:gate=0.0", "--rule", "medoid", "--out", out)
    assert result.exit_code == 0, result.output
    own, plain = json.loads((out / "replay.json").read_text())
    assert own["rule"] == "test_replay:confident:gate=0.0"
    assert (own["labelled"], own["label_share"]) == (plain["labelled"], plain["label_share"])  # gate 0: the medoid
    sure = cli("replay", kept_run, "--rule", "test_replay:confident:gate=1.0,fallback=none", "--out", tmp_path / "sure")
    # only the attacker (math) claims the maximal confidence, so it alone passes: this rule trusts what it is told
    assert sure.exit_code == 0 and json.loads((tmp_path / "sure" / "replay.json").read_text())[0]["label_share"]["math"] == 1.0
    one_line_error(cli("replay", kept_run, "--rule", "test_replay:nothing"), "has no 'nothing'")


@pytest.mark.parametrize("spec, described", [
    ("geo:kind=inflate_competence,target=own,confidence=max", "inflate_competence (target own, max confidence)"),
    ("geo:kind=expert_liar", "expert_liar"),
    ("geo:kind=sybil,target=own,part=1/2", "sybil (target own, part 1/2)"),
    ("geo:kind=claim_finished", "claim_finished"),
])
def test_replay_takes_each_adaptive_attack_and_each_defence(kept_run, tmp_path, spec, described):
    rules = ["gated", "gated:tie_break=random", "gated:max_share=0.5", "gated:corroborate=0.5"]
    result = cli("replay", kept_run, *(a for r in rules for a in ("--rule", r)), "--attack", spec, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "replay.json").read_text())
    assert [r["rule"] for r in table] == rules and all(r["attacks"] == {"geo": described} for r in table)
    assert all(0 <= v <= 1 for r in table for v in r["expert_labelled"].values())
    capped = next(r for r in table if r["rule"] == "gated:max_share=0.5")
    assert max(capped["label_share"].values()) <= 0.5 + 1e-9


def test_replay_refuses_what_it_cannot_recompute(kept_run):
    one_line_error(cli("replay", kept_run, "--rule", "medoid", "--set", "train.steps=3"), "only consensus.* keys")
    one_line_error(cli("replay", kept_run, "--rule", "gated:competence=knn"), "cannot change after the fact")
    one_line_error(cli("replay", kept_run, "--rule", "medoid", "--attack", "nobody"), "no client 'nobody'")


def test_skip_own_leaves_out_labels_that_are_the_clients_own_answers(tiny_llama_dir):
    from semcon.config import load_config
    from semcon.protocol import Download
    from semcon.transport.assembly import assemble

    tokens = {}
    for skip in (False, True):
        fed = assemble(load_config(tree=tiny_tree(str(tiny_llama_dir), consensus={"skip_own": skip})))
        client, prompts = fed.clients[0], fed.prompts
        upload = client.answer(1, prompts)
        others = {p.id: f"another answer to {p.id}" for p in prompts[3:]}
        client.pseudo = Download(1, {**{p.id: upload.answers[p.id] for p in prompts[:3]}, **others})
        client.steps = 1
        tokens[skip] = client.train(1, prompts).tokens
    assert tokens[True] < tokens[False]


def test_oracles_are_refused_on_flower(tiny_llama_dir, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(str(tiny_llama_dir))))
    for rule in ("oracle_expert", "oracle_reference"):
        one_line_error(cli("flower", "local", path, "--set", f"consensus.rule={rule}", "--out", tmp_path / rule),
                       "measurement bound")


def test_experts_are_the_domain_owners_or_the_largest_holders(tiny_llama_dir):
    from semcon.config import load_config
    from semcon.data import build_splits, experts_of

    cfg = load_config(tree=tiny_tree(str(tiny_llama_dir)))
    assert experts_of(cfg) == {"wiki:Geography": "geo", "gsm8k": "math"}
    mixed = load_config(tree=tiny_tree(str(tiny_llama_dir), data={"partition": "dirichlet", "alpha": 0.3,
                                                                   "examples_per_client": 8, "eval_per_domain": 4}))
    splits = build_splits(mixed)
    experts = experts_of(mixed, splits)
    for domain, name in experts.items():
        held = {c: sum(e.domain == domain for e in rows_) for c, rows_ in splits.private.items()}
        assert held[name] == max(held.values())


@pytest.mark.long(40)
def test_ablate_shares_round_0_between_consensus_cells_and_reports_a_failed_one(tiny_llama_dir, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(str(tiny_llama_dir))))
    out = tmp_path / "abl"
    args = ("ablate", path, "--grid", "consensus.rule=medoid,oracle_expert,gated,test_replay:confident", "--methods",
            "semantic_consensus",
            "--seeds", "1", "--out", out)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    first, second = (out / f"consensus.rule={r}" / "semantic_consensus" / "seed-0" for r in ("medoid", "oracle_expert"))
    table = (out / "ablation.md").read_text()
    assert "failed: ConfigError" in table and "weighs answers by competence" in table  # gated without a signal
    assert "oracle_expert, a bound" in table and (out / "ablation_consensus.rule.png").is_file()
    assert "Produced by semcon" in table  # the commit and machine of the cells' runs
    cell_report = out / "consensus.rule=oracle_expert" / "report.md"
    assert "A bound, not a method" in cell_report.read_text()
    assert cli("report", cell_report.parent).exit_code == 0  # rebuilt, it is still the ablation's cell
    assert cell_report.read_text().startswith("# semcon ablate cell `consensus.rule=oracle_expert`")
    # the second cell started from the first's round 0 and round-1 answers: the same bytes, no generation
    round0 = [r for r in rows(first / "ledger.jsonl") if r["round"] == 0]
    assert round0 == [r for r in rows(second / "ledger.jsonl") if r["round"] == 0]
    up = [(r["client"], r["digest"]) for r in rows(first / "ledger.jsonl") if r["kind"] == "upload"]
    assert up == [(r["client"], r["digest"]) for r in rows(second / "ledger.jsonl") if r["kind"] == "upload"]
    round1 = next(r for r in rows(second / "metrics.jsonl") if r.get("round") == 1)
    assert round1["seconds"]["generate"] < 0.5
    assert cli("verify", second).exit_code == 0
    own = out / "consensus.rule=test_replay_confident" / "semantic_consensus" / "seed-0"  # a rule defined below
    assert cli("verify", own).exit_code == 0, "a user's rule verifies like a built-in one"
    # run again: the finished cells are kept, not run again
    stamp = (second / "summary.json").stat().st_mtime
    assert cli(*args).exit_code == 0 and (second / "summary.json").stat().st_mtime == stamp


def test_same_label_allows_the_embedders_last_digits_only():
    row = {"prompt_id": "p0", "prompt": "q", "client": "a", "text": "t", "agreement": 0.71765, "answers": 3,
           "finished": True, "confidence": None}
    assert same_label({**row, "agreement": 0.717649}, row)
    assert not same_label({**row, "agreement": 0.7}, row)
    assert not same_label({**row, "client": "b"}, row)
    assert not same_label(row, None) and same_label(None, None)
