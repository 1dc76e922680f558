"""The competence-aware rules and the bounds, as pure functions over arrays (``consensus.py``)."""

from pathlib import Path

import numpy as np
import pytest

from semcon.config import ConfigError, ConsensusConfig, load_config
from semcon.consensus import Ballot, Round, decide, gated, normalize, oracle_expert, rank_normalize, semantic_medoid, supported, weighted_medoid

P, N = 16, 5
DEMO = Path(__file__).parents[1] / "configs" / "demo.yaml"


def random_unit(p=P, n=N, d=16, seed=0):
    return normalize(np.random.default_rng(seed).normal(size=(p, n, d)))


def ones(p=P, n=N):
    return np.ones((p, n), dtype=bool)


RULES = {
    "weighted_medoid": lambda emb, valid, comp, **kw: decide(emb, valid, weighted_medoid, competence=comp,
                                                             temperature=0.1, **kw),
    "gated": lambda emb, valid, comp, **kw: decide(emb, valid, gated, competence=comp, gate=0.5, fallback=True, **kw),
}


@pytest.mark.parametrize("rule", RULES)
def test_order_invariant(rule):
    emb, comp = random_unit(seed=1), np.random.default_rng(1).random((P, N))
    perm = np.array([3, 0, 4, 1, 2])
    base = RULES[rule](emb, ones(), comp)
    permuted = RULES[rule](emb[:, perm], ones(), comp[:, perm])
    assert (perm[permuted.choice] == base.choice).all()
    np.testing.assert_allclose(permuted.agreement, base.agreement, rtol=1e-5)


@pytest.mark.parametrize("rule", RULES)
def test_identical_answers_go_to_the_lowest_client(rule):
    emb = np.repeat(normalize(np.ones((1, 1, 8))), 4, axis=1)
    res = RULES[rule](emb, ones(1, 4), np.full((1, 4), 0.9), text_ids=np.zeros((1, 4), dtype=int))
    assert res.choice[0] == 0 and res.agreement[0] == pytest.approx(1.0)


@pytest.mark.parametrize("rule", RULES)
def test_ties_between_texts_go_by_confidence(rule):
    emb = normalize(np.array([[[1.0, 0.0], [0.0, 1.0]]]))  # two clients: always a tie
    text_ids = np.array([[0, 1]])
    for confident in (0, 1):
        conf = np.array([[-1.0, -1.0]])
        conf[0, confident] = -0.1
        res = RULES[rule](emb, ones(1, 2), np.full((1, 2), 0.7), text_ids=text_ids, confidence=conf)
        assert res.choice[0] == confident


@pytest.mark.parametrize("rule", RULES)
def test_an_outlier_is_never_chosen_when_competence_is_equal(rule):
    rng = np.random.default_rng(2)
    center = normalize(rng.normal(size=(10, 1, 32)))
    emb = normalize(center + 0.05 * rng.normal(size=(10, 4, 32)))
    emb = np.concatenate([emb, normalize(-center)], axis=1)  # client 4 says the opposite
    res = RULES[rule](emb, ones(10, 5), np.full((10, 5), 0.8))
    assert (res.choice != 4).all()
    assert (res.choice == semantic_medoid(emb).choice).all()  # equal competence: the plain medoid


def one_expert(p=8, n=4, seed=3):
    """Three clients that agree with each other and one expert (client 3) that says something else."""
    rng = np.random.default_rng(seed)
    crowd, expert = normalize(rng.normal(size=(p, 1, 16))), normalize(rng.normal(size=(p, 1, 16)))
    emb = normalize(np.concatenate([crowd + 0.1 * rng.normal(size=(p, n - 1, 16)), expert], axis=1))
    comp = np.full((p, n), 0.2)
    comp[:, 3] = 0.95
    return emb, comp


def test_competence_lets_the_lone_expert_win_where_the_medoid_buries_it():
    emb, comp = one_expert()
    assert (semantic_medoid(emb).choice != 3).all()
    assert (decide(emb, ones(8, 4), weighted_medoid, competence=comp, temperature=0.1).choice == 3).all()
    assert (decide(emb, ones(8, 4), gated, competence=comp, gate=0.9).choice == 3).all()
    # a high temperature is the medoid again
    assert (decide(emb, ones(8, 4), weighted_medoid, competence=comp, temperature=1e3).choice == semantic_medoid(emb).choice).all()


def test_gated_without_a_passing_answer_gives_no_label_or_the_medoid():
    emb, comp = one_expert()
    assert (decide(emb, ones(8, 4), gated, competence=comp, gate=0.99).choice == -1).all()
    assert (decide(emb, ones(8, 4), gated, competence=comp, gate=0.99, fallback=True).choice == semantic_medoid(emb).choice).all()


def test_oracle_takes_the_expert_where_its_answer_is_valid():
    emb, _ = one_expert()
    valid = ones(8, 4)
    valid[0, 3] = False
    res = decide(emb, valid, oracle_expert, expert=np.array([3] * 7 + [-1]))
    assert list(res.choice) == [-1, 3, 3, 3, 3, 3, 3, -1]


def test_rank_normalize_gives_mid_ranks_and_flattens_a_constant_claim():
    comp = np.array([[0.1, 1.0], [0.5, 1.0], [0.9, 1.0], [0.5, 1.0]])
    ranks = rank_normalize(comp)
    np.testing.assert_allclose(ranks[:, 0], [0.125, 0.5, 0.875, 0.5])
    np.testing.assert_allclose(ranks[:, 1], 0.5)  # the same claim on every prompt ranks in the middle
    np.testing.assert_allclose(ranks.mean(axis=0), 0.5)


def test_support_drops_an_answer_no_other_agrees_with():
    emb, _ = one_expert()
    keep = supported(Round.of(emb, ones(8, 4)), 0.5)
    assert keep[:, :3].all() and not keep[:, 3].any()


def domains_with_experts(p=64, n=5, seed=4):
    """4 domains of p/4 prompts; honest client d is the expert of domain d (high competence there, alone in its
    answer); client 4 is an attacker whose answers are one off-topic text."""
    rng = np.random.default_rng(seed)
    domain = np.repeat(np.arange(4), p // 4)
    crowd = normalize(rng.normal(size=(p, 1, 32)))
    truth = normalize(rng.normal(size=(p, 1, 32)))
    emb = np.repeat(crowd, n, axis=1) + 0.1 * rng.normal(size=(p, n, 32))
    emb[np.arange(p), domain] = truth[:, 0] + 0.1 * rng.normal(size=(p, 32))  # the expert knows better
    emb[:, 4] = normalize(rng.normal(size=(1, 32)))  # the attacker's constant text
    comp = np.where(np.arange(n)[None, :] == domain[:, None], rng.uniform(0.8, 1.0, (p, n)), rng.uniform(0, 0.5, (p, n)))
    return normalize(emb), comp, domain


@pytest.mark.parametrize("claim", ["top", "random", "one_domain", "honest_looking"])
def test_rank_normalization_bounds_what_an_inflating_attacker_captures(claim):
    """Whatever the attacker (client 4) reports, with competence compared as ranks over the round's prompts it
    passes a gate g on at most (1 - g) of them (ties aside), so it captures at most that share of the labels.
    Each honest expert wins every prompt of its domain that the attacker does not claim; against the
    inflate_competence attack itself (the top on every prompt: all ties, rank 0.5) it wins them all."""
    emb, comp, domain = domains_with_experts()
    p, rng = len(domain), np.random.default_rng(5)
    comp[:, 4] = {"top": np.ones(p), "random": rng.random(p), "one_domain": (domain == 0).astype(float),
                  "honest_looking": rng.uniform(0.8, 1.0, p)}[claim]
    conf = np.full(comp.shape, -1.0)
    conf[:, 4] = 0.0  # and the highest confidence too
    ranks = rank_normalize(comp)
    for g in (0.5, 0.75, 0.9):
        res = decide(emb, ones(p, 5), gated, competence=ranks, gate=g, confidence=conf)
        assert (res.choice == 4).mean() <= 1 - g + 1 / p, (claim, g)
    res = decide(emb, ones(p, 5), gated, competence=ranks, gate=0.75, confidence=conf)
    unclaimed = ranks[:, 4] < 0.75
    assert (res.choice[unclaimed] == domain[unclaimed]).all()
    if claim == "top":
        assert (res.choice == domain).all()
    weighted = decide(emb, ones(p, 5), weighted_medoid, competence=ranks, temperature=0.1, confidence=conf)
    assert (weighted.choice == 4).mean() <= 0.25 + 1 / p


def test_without_the_bound_an_inflating_attacker_captures_the_federation():
    emb, comp, domain = domains_with_experts()
    comp[:, 4] = 1.0
    conf = np.full(comp.shape, -1.0)
    conf[:, 4] = 0.0
    raw = decide(emb, ones(64, 5), gated, competence=comp, gate=0.75, confidence=conf)
    assert (raw.choice == 4).mean() >= 0.9  # it passes every gate and wins the ties by confidence
    ranked = decide(emb, ones(64, 5), gated, competence=rank_normalize(comp), gate=0.75, confidence=conf)
    assert (ranked.choice == 4).mean() == 0
    for d in range(4):
        assert (ranked.choice[domain == d] == d).all()
    # the support bound alone also stops a constant off-topic text
    kept = supported(Round.of(emb, ones(64, 5)), 0.5)
    assert not kept[:, 4].any() and (decide(emb, kept, gated, competence=comp, gate=0.75, confidence=conf).choice != 4).all()


def two_votes(valid, sims, *, support):
    """A rule of this file: eligible when at least two other candidates agree at cosine >= ``support``."""
    agree = ((sims >= support) & valid[:, None, :]).sum(axis=2) - valid  # the others, not the answer itself
    return Ballot(eligible=valid & (agree >= 2), weights=valid.astype(float))


def test_a_users_rule_runs_through_the_same_select():
    emb, _ = one_expert()
    res = decide(emb, ones(8, 4), two_votes, support=0.5)
    assert (res.choice == semantic_medoid(emb).choice).all() and (res.choice != 3).all()  # the expert agrees with nobody
    assert (decide(emb, ones(8, 4), two_votes, support=0.999).choice == -1).all()
    assert (decide(emb, ones(8, 4), two_votes, support=0.999, fallback=True).choice == semantic_medoid(emb).choice).all()


@pytest.mark.parametrize("rule, problem", [
    ("test_rules:two_votes", None),
    ("no_such_module_here:rule", "cannot import module 'no_such_module_here'"),
    ("test_rules:missing", "has no 'missing'"),
    ("test_rules:random_unit", "parameter 'p' is none of the arrays a rule reads"),
    ("test_rules:bad_setting", "reads setting 'colour', which is no consensus setting"),
    ("mediod", "unknown rule 'mediod'"),
])
def test_a_rule_is_checked_when_the_config_loads(rule, problem):
    if problem is None:
        assert ConsensusConfig(rule=rule, support=0.5).reads == (["valid", "sims"], ["support"])
        return
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, [f"consensus.rule={rule}"])
    assert problem in str(e.value) and "\n" not in str(e.value)


def bad_setting(valid, *, colour):
    return Ballot(valid, valid.astype(float))


def attacker_on_domain_0(p=64):
    """The four experts of ``domains_with_experts`` and an attacker (client 4) that claims the top competence on
    domain 0 alone, which its rank budget allows, and the highest confidence."""
    emb, comp, domain = domains_with_experts(p)
    comp[:, 4] = (domain == 0).astype(float)
    conf = np.full(comp.shape, -1.0)
    conf[:, 4] = 0.0
    return emb, rank_normalize(comp), conf, domain


@pytest.mark.parametrize("defence", [{}, {"max_share": 0.3}, {"corroborate": 0.5}, {"trust_confidence": False}])
def test_with_no_attacker_every_expert_still_wins_its_domain_under_each_defence(defence):
    emb, comp, domain = domains_with_experts()
    honest = np.ones((64, 5), dtype=bool)
    honest[:, 4] = False  # no attacker: client 4 sends nothing
    res = decide(emb, honest, gated, competence=rank_normalize(comp), gate=0.75, **defence)
    assert (res.choice == domain).all()


@pytest.mark.parametrize("defence", [{"max_share": 0.3}, {"corroborate": 0.5}, {"trust_confidence": False}])
def test_defences_are_order_invariant(defence):
    emb, comp, conf, _ = attacker_on_domain_0()
    perm = np.array([3, 0, 4, 1, 2])
    base = decide(emb, ones(64, 5), gated, competence=comp, gate=0.75, confidence=conf, **defence)
    permuted = decide(emb[:, perm], ones(64, 5), gated, competence=comp[:, perm], gate=0.75, confidence=conf[:, perm],
                      **defence)
    assert (np.where(permuted.choice >= 0, perm[permuted.choice], -1) == base.choice).all()


def test_a_targeted_claim_takes_its_domain_until_a_defence_stands_in_the_way():
    """Claiming one domain stays inside the rank bound, so the attacker passes the gate there beside the expert;
    the tie between the two goes to the higher reported confidence, which the attacker sets to the maximum."""
    emb, comp, conf, domain = attacker_on_domain_0()
    plain = decide(emb, ones(64, 5), gated, competence=comp, gate=0.75, confidence=conf)
    assert (plain.choice[domain == 0] == 4).all() and (plain.choice[domain > 0] == domain[domain > 0]).all()
    # a random tie-break: the attacker wins about half of the ties, and nothing else
    coin = decide(emb, ones(64, 5), gated, competence=comp, gate=0.75, confidence=conf, trust_confidence=False)
    assert 0.2 < (coin.choice[domain == 0] == 4).mean() < 0.8 and (coin.choice[domain > 0] == domain[domain > 0]).all()
    # a witness for contested claims: neither the lone expert nor the lone attacker has one: no label there
    witness = decide(emb, ones(64, 5), gated, competence=comp, gate=0.75, confidence=conf, corroborate=0.5)
    assert (witness.choice[domain == 0] == -1).all() and (witness.choice[domain > 0] == domain[domain > 0]).all()
    # a cap on any client's share bounds the attacker, at a price: below a domain's share it costs the experts too
    for cap in (0.1, 0.2, 0.3):
        res = decide(emb, ones(64, 5), gated, competence=comp, gate=0.75, confidence=conf, max_share=cap)
        kept = np.bincount(res.choice[res.choice >= 0], minlength=5)
        assert kept.max() <= int(cap * 64) and kept[4] <= int(cap * 64)
        assert all(kept[d] == min(16, int(cap * 64)) for d in (1, 2, 3))  # the others keep their domains up to the cap
