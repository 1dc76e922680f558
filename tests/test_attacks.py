"""Adversarial members (``attacks.py``): each kind changes only the attacker's upload, deterministically."""

import re

import pytest

from semcon.config import OFF_TOPIC, AttackConfig, ConfigError, load_config
from semcon.data import Example, Prompt
from semcon.member.attacks import attack, plausible_wrong, poison
from semcon.protocol import Upload

PROMPTS = [Prompt("p0", "How many legs does a spider have?", "biology"),
           Prompt("p1", "Which river flows through Paris?", "geography"),
           Prompt("p2", "Which river flows through Vienna?", "geography")]
HONEST = {"p0": "A spider has 8 legs, and most have 8 eyes.", "p1": "The Seine flows through Paris.",
          "p2": "The Danube flows through Vienna and Budapest."}
PRIVATE = ["Photosynthesis turns light into sugar.", "The heart has four chambers."]


def honest(client="mallory", round=1) -> Upload:
    return Upload(round, client, dict(HONEST), finished={k: False for k in HONEST},
                  confidence={k: -1.5 for k in HONEST}, competence={"knn": {k: 0.2 for k in HONEST}})


def attacked(kind, **fields) -> Upload:
    return attack(honest(), AttackConfig(kind=kind, **fields), PROMPTS, PRIVATE, seed=3)


def test_no_attack_is_the_honest_upload():
    assert attack(honest(), None, PROMPTS, PRIVATE) == honest()


@pytest.mark.parametrize("kind", ["random", "echo", "constant", "off_topic", "plausible_wrong", "sybil"])
def test_each_kind_replaces_the_answers_claims_the_best_flags_and_keeps_competence(kind):
    up = attacked(kind)
    assert set(up.answers) == set(HONEST) and up.answers != HONEST
    assert all(up.finished.values()) and set(up.confidence.values()) == {0.0}
    assert up.competence == honest().competence  # only inflate_competence lies about it
    assert attacked(kind) == up  # deterministic in (seed, round, client)


def test_what_each_kind_sends():
    assert attacked("echo").answers == {p.id: p.instruction for p in PROMPTS}
    assert set(attacked("constant").answers.values()) == {OFF_TOPIC}
    assert set(attacked("sybil", text="Buy now.").answers.values()) == {"Buy now."}
    assert set(attacked("off_topic").answers.values()) <= set(PRIVATE)
    words = {w for t in HONEST.values() for w in t.split()}
    for pid, text in attacked("random").answers.items():
        assert set(text.split()) <= words and len(text.split()) == max(5, len(HONEST[pid].split()))


def test_plausible_wrong_changes_numbers_and_names_or_takes_another_answer_of_the_domain():
    up = attacked("plausible_wrong").answers
    assert re.sub(r"\d", "#", up["p0"]) == re.sub(r"\d", "#", HONEST["p0"]) and up["p0"] != HONEST["p0"]
    assert up["p1"] != HONEST["p1"] and "Paris" not in up["p1"].replace("through Paris", "")
    import random

    plain = {"p1": "It is a river.", "p2": "A long one."}
    assert plausible_wrong(PROMPTS[1], PROMPTS[1:], plain, random.Random(0)) == "A long one."


def test_inflate_competence_with_honest_or_constant_answers():
    up = attacked("inflate_competence")
    assert up.answers == HONEST and set(up.competence["knn"].values()) == {1.0}
    up = attacked("inflate_competence", answers="constant", text="X")
    assert set(up.answers.values()) == {"X"} and set(up.competence["knn"].values()) == {1.0}


def test_sybils_of_one_group_send_the_same_texts():
    a = attack(honest("s1"), AttackConfig(kind="sybil"), PROMPTS, PRIVATE, seed=0)
    b = attack(honest("s2", round=2), AttackConfig(kind="sybil"), PROMPTS, ["other"], seed=0)
    assert a.answers == b.answers


def test_poison_moves_every_response_to_another_instruction():
    private = [Example(f"e{i}", f"q{i}", f"a{i}", "c", "d") for i in range(7)]
    moved = poison(private, seed=1)
    assert [e.instruction for e in moved] == [e.instruction for e in private]
    assert all(m.response != e.response for m, e in zip(moved, private))
    assert sorted(m.response for m in moved) == sorted(e.response for e in private)


def test_adaptive_attacks_act_on_their_targets_only():
    """Each adaptive attack changes the targeted prompts of the attacker's own upload and nothing else."""
    geo = {"p1", "p2"}
    inflated = attacked("inflate_competence", target="geography")
    assert {k for k, v in inflated.competence["knn"].items() if v == 1.0} == geo and inflated.answers == HONEST
    assert inflated.confidence == honest().confidence  # its own confidence unless told to claim the maximum
    assert {k for k, v in attacked("inflate_competence", target="geography", confidence="max").confidence.items()
            if v == 0.0} == geo
    assert sum(v == 1.0 for v in attacked("inflate_competence", share=0.34).competence["knn"].values()) == 1
    liar = attack(honest(), AttackConfig(kind="expert_liar"), PROMPTS, PRIVATE, seed=3, own_domain="geography")
    assert {k for k in HONEST if liar.answers[k] != HONEST[k]} == geo  # plausible but wrong on its own domain
    assert liar.competence == honest().competence and liar.finished == {"p0": False, "p1": True, "p2": True}
    halves = [attacked("sybil", target="geography", part=f"{i}/2") for i in (1, 2)]
    claimed = [{k for k, v in h.competence["knn"].items() if v == 1.0} for h in halves]
    assert claimed[0] | claimed[1] == geo and not claimed[0] & claimed[1]  # two members split the domain
    assert all(h.answers[k] == OFF_TOPIC for h, c in zip(halves, claimed) for k in c)
    bio = attack(honest(), AttackConfig(kind="inflate_competence", target="next"), PROMPTS, PRIVATE, seed=3,
                 own_domain="biology")  # the domain after its own, in sorted order
    assert {k for k, v in bio.competence["knn"].items() if v == 1.0} == geo
    geo_next = attack(honest(), AttackConfig(kind="inflate_competence", target="next"), PROMPTS, PRIVATE, seed=3,
                      own_domain="geography")  # wrapping round
    assert {k for k, v in geo_next.competence["knn"].items() if v == 1.0} == {"p0"}
    done = attacked("claim_finished")
    assert done.answers == HONEST and all(done.finished.values()) and done.confidence == honest().confidence
    with pytest.raises(ValueError, match="part"):
        AttackConfig(kind="random", part="1/2")


def test_only_a_poisoning_attacker_trains_on_swapped_rows():
    from pathlib import Path

    from semcon.config import load_config
    from semcon.member.client import client_seed
    from semcon.transport.assembly import trained_on

    demo = Path(__file__).parents[1] / "configs" / "demo.yaml"
    private = [Example(f"e{i}", f"q{i}", f"a{i}", "c", "d") for i in range(7)]
    cfg = load_config(demo, ["adversaries={kind: random, poison_private: true}"])  # the last client, chat
    assert trained_on(cfg, 2, "chat", private) == poison(private, client_seed(cfg.seed, 0, 2))
    assert trained_on(cfg, 0, "geography", private) == private
    assert trained_on(load_config(demo, ["adversaries={kind: random}"]), 2, "chat", private) == private


def test_adversaries_make_the_last_clients_attackers(tiny_llama_dir):
    from conftest import tiny_tree

    tree = tiny_tree(str(tiny_llama_dir))
    tree["clients"].append({"name": "third", "model": str(tiny_llama_dir), "data": {"source": "chatterbot"}})
    tree["adversaries"] = {"kind": "random", "count": 2}
    cfg = load_config(tree=tree)
    assert cfg.attackers == [c.name for c in cfg.clients[1:]]
    assert cfg.client_settings(cfg.clients[-1].name).attack.kind == "random"
    assert cfg.client_settings(cfg.clients[0].name).attack is None
    tree["clients"][0]["attack"] = {"kind": "echo"}  # a client's own attack wins
    assert load_config(tree=tree).client_settings(cfg.clients[0].name).attack.kind == "echo"
    assert load_config(tree=tree, overrides=["adversaries.count=0", "clients.0.attack=null"]).attackers == []
    rotated = [load_config(tree=tree, overrides=["clients.0.attack=null", "adversaries.rotate=true", f"seed={s}"])
               for s in range(4)]  # every client attacks at some seed, the last two at seed 0
    assert [c.attackers for c in rotated] == [["math", "third"], ["geo", "math"], ["geo", "third"], ["math", "third"]]
    with pytest.raises(ConfigError, match="adversaries.count=4 exceeds"):
        load_config(tree=tree, overrides=["adversaries.count=4"])
    with pytest.raises(ConfigError, match="applies to kind inflate_competence only"):
        load_config(tree=tree, overrides=["adversaries.answers=constant"])


@pytest.mark.long(40)
def test_ablate_over_the_number_of_attackers_reports_their_share_and_honest_quality(tiny_llama_dir, tmp_path):
    """On a tiny model: a poisoned plausible_wrong attacker trains, answers and is evaluated like any client; the
    sweep's table and plot give the honest clients' bits per byte and the attackers' share, and a run with the
    reputation defence verifies (its weights carried from round to round)."""
    import json

    import yaml
    from conftest import cli, rows, tiny_tree

    from semcon.studies.report import seed_scores

    tree = tiny_tree(str(tiny_llama_dir), rounds=2, adversaries={"kind": "plausible_wrong", "poison_private": True})
    tree["consensus"]["reputation"] = 10.0
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    out = tmp_path / "abl"
    result = cli("ablate", path, "--grid", "adversaries.count=0,1", "--methods", "semantic_consensus", "--seeds", "1",
                 "--out", out)
    assert result.exit_code == 0, result.output
    attacked = out / "adversaries.count=1" / "semantic_consensus" / "seed-0"
    summary = json.loads((attacked / "summary.json").read_text())
    assert summary["attackers"] == ["math"] and set(summary["eval_after"]) == {"geo", "math"}
    assert all(set(r["reputation"]) == {"geo", "math"} for r in summary["per_round"] if r["round"] >= 1)
    assert all(r["finished"] and r["confidence"] == 0.0 for r in rows(attacked / "uploads" / "round_01.jsonl")
               if r["client"] == "math")
    record = {r["cell"]: r for r in json.loads((out / "ablation.json").read_text())}
    assert record["adversaries.count=0"]["attacker_share"] == [0]
    clean = json.loads((out / "adversaries.count=0" / "semantic_consensus" / "seed-0" / "summary.json").read_text())
    assert record["adversaries.count=0"]["honest_bpb"] == [seed_scores(clean, "bpb")["geo"]]  # math attacks next door
    assert 0 <= record["adversaries.count=1"]["attacker_share"][0] <= 1
    geo = seed_scores(summary, "bpb")["geo"] - seed_scores(clean, "bpb")["geo"]  # paired with the clean run, same seed
    assert record["adversaries.count=1"]["honest_delta"] == {"0": {"geo": pytest.approx(geo)}}
    assert record["adversaries.count=0"]["honest_delta"] == {"0": {"geo": 0.0, "math": 0.0}}
    assert (out / "ablation_adversaries.count.png").is_file()
    lines = (out / "ablation.md").read_text().splitlines()
    table = [line.strip("| ").split(" | ") for line in lines if line.startswith("| ")]
    clean_row = dict(zip(table[0], next(r for r in table if r[0] == "adversaries.count=0")))  # values under headers
    assert clean_row["honest Δ (paired) ↓"] == "0.000" and clean_row["attacker share"] == "0.00"
    assert clean_row["honest bits/byte ↓"] == f"{seed_scores(clean, 'bpb')['geo']:.3f}"
    assert cli("verify", attacked).exit_code == 0
