"""Defences against adversarial members: pure functions in ``consensus.py`` (votes, copies, reputation), and the
server using them on real embedded answers with attacks from ``attacks.py``."""

import numpy as np
import pytest

from semcon.config import AttackConfig, ConsensusConfig
from semcon.consensus import (
    Round,
    agreement_with_others,
    medoid,
    merge_copies,
    normalize,
    semantic_medoid,
    update_reputation,
)
from semcon.coordinator.server import SemanticConsensus
from semcon.data import Prompt
from semcon.member.attacks import attack
from semcon.protocol import Upload


def sybil_arrays(p=12, honest=3, sybils=2, seed=0):
    """Honest clients whose answers agree only loosely (cosine about 0.3), and sybils sending one text."""
    rng = np.random.default_rng(seed)
    topic = normalize(rng.normal(size=(p, 1, 64)))
    emb = normalize(topic + 1.5 * normalize(rng.normal(size=(p, honest, 64))))
    fake = np.repeat(normalize(rng.normal(size=(p, 1, 64))), sybils, axis=1)
    return normalize(np.concatenate([emb, fake], axis=1)), np.ones((p, honest + sybils), dtype=bool)


def test_votes_of_one_reproduce_the_medoid_and_a_silenced_client_loses_its_vote():
    emb, valid = sybil_arrays(seed=1)
    valid[3, 1] = False
    plain = semantic_medoid(emb, valid)
    same = semantic_medoid(emb, valid, reputation=np.ones(5))
    assert (same.choice == plain.choice).all()
    np.testing.assert_allclose(same.agreement, plain.agreement)
    # with the sybils' votes gone, the honest answers outscore the copies again
    assert (semantic_medoid(emb, valid, reputation=np.array([1, 1, 1, 1e-6, 1e-6])).choice < 3).all()


def test_two_sybils_win_the_plain_medoid_and_count_once_when_merged():
    emb, valid = sybil_arrays()
    assert (semantic_medoid(emb, valid).choice >= 3).mean() > 0.5  # the copies vote for each other
    assert (semantic_medoid(emb, valid, merge=0.995).choice < 3).all()
    merged = merge_copies(Round.of(emb, valid), medoid(valid), 0.995)
    np.testing.assert_allclose(merged.weights[0], [1, 1, 1, 0.5, 0.5])
    assert merged.together[0, 3, 4] and not merged.together[0, 0, 1]


def test_reputation_arithmetic_on_fixed_numbers():
    rep = update_reputation(np.ones(3), np.array([0.5, 0.4, np.nan]), beta=10)
    np.testing.assert_allclose(rep, [1.0, np.exp(-1.0), 1.0])  # the closest keeps 1, no evidence keeps its weight
    np.testing.assert_allclose(update_reputation(np.array([0.5, 1.0]), np.array([0.3, 0.3]), 5), [0.5, 1.0])
    assert (update_reputation(np.ones(2), np.array([np.nan, np.nan]), 5) == 1).all()


def test_agreeing_with_a_copy_of_oneself_earns_nothing():
    emb, valid = sybil_arrays()
    agreement = agreement_with_others(Round.of(emb, valid), np.ones(5))
    assert agreement[3:].max() < agreement[:3].min()
    valid[:, 0] = False
    assert np.isnan(agreement_with_others(Round.of(emb, valid), np.ones(5))[0])


# The server on real answers: eight prompts on unrelated topics, honest clients that answer each differently.
PROMPTS = [Prompt(f"p{i}", q, "d") for i, q in enumerate([
    "Why is the sky blue?", "How do vaccines work?", "What causes inflation?", "How do plants make food?",
    "Why do we sleep?", "How does a bicycle stay upright?", "What is a black hole?", "Why do leaves change colour?"])]
ANSWERS = [
    ["Sunlight scatters off air molecules, and blue light scatters most.", "Because of Rayleigh scattering in the "
     "atmosphere.", "Short wavelengths bounce around the air more than red ones do."],
    ["They train the immune system to recognise a germ.", "A weakened pathogen makes the body produce antibodies.",
     "Vaccines show your defences a harmless piece of a virus."],
    ["Too much money chasing too few goods raises prices.", "Rising demand or costs push the price level up.",
     "Central banks printing money can make prices climb."],
    ["Photosynthesis turns light, water and carbon dioxide into sugar.", "Leaves use chlorophyll to capture the "
     "sun's energy.", "Plants build glucose from air and water using light."],
    ["Sleep lets the brain consolidate memories.", "The body repairs tissue and clears waste while we rest.",
     "We get tired because adenosine builds up during the day."],
    ["Steering into a fall keeps the wheels under the rider.", "The front fork's trail makes it self-correcting.",
     "Moving forward, small turns keep the balance."],
    ["A region where gravity is so strong that light cannot escape.", "What remains when a massive star "
     "collapses.", "An object with an event horizon around a singularity."],
    ["Chlorophyll breaks down in autumn, revealing yellow pigments.", "Shorter days stop the green pigment, so "
     "other colours show.", "Trees pull nutrients back before winter and the green fades."],
]
HONEST = ["h0", "h1", "h2"]


def round_uploads(t: int, attackers: dict[str, AttackConfig]) -> dict[str, Upload]:
    """Each honest client's answers (h_k gives the k-th answer); each attacker attacks the upload of honest
    client h0's answers."""
    out = {}
    for i, name in enumerate([*HONEST, *attackers]):
        texts = {p.id: ANSWERS[k][i % 3] for k, p in enumerate(PROMPTS)}
        up = Upload(t, name, texts, finished=dict.fromkeys(texts, True), confidence=dict.fromkeys(texts, -1.0))
        out[name] = attack(up, attackers.get(name), PROMPTS, seed=7)
    return out


def attacker_share(metrics: dict, attackers) -> float:
    return sum(metrics["label_share"][a] for a in attackers)


def test_random_attackers_supply_no_pseudo_label_under_the_medoid(embedder):
    attackers = {"r0": AttackConfig(kind="random"), "r1": AttackConfig(kind="random")}
    server = SemanticConsensus(ConsensusConfig(), [*HONEST, *attackers], PROMPTS, 1, embedder)
    result = server.aggregate(1, round_uploads(1, attackers))
    assert len(result.labels) == len(PROMPTS) and attacker_share(result.metrics, attackers) == 0


@pytest.mark.parametrize("defence", [{"reputation": 10.0}, {"sybil_merge": 0.995}])
def test_two_sybils_capture_labels_until_a_defence_stops_them(embedder, defence):
    """Two sybils sending one off-topic text against three honest clients that answer differently: the medoid
    gives them labels in every round (the copies vote for each other); each defence lowers their share within
    three rounds, reported in the round's metrics. Reputation is carried from round to round and restored."""
    attackers = {"s0": AttackConfig(kind="sybil"), "s1": AttackConfig(kind="sybil")}
    names = [*HONEST, *attackers]

    def shares(cfg: ConsensusConfig) -> list[float]:
        server = SemanticConsensus(cfg, names, PROMPTS, 3, embedder)
        out = [attacker_share(server.aggregate(t, round_uploads(t, attackers)).metrics, attackers) for t in (1, 2, 3)]
        if cfg.reputation:
            assert server.reputation["s0"] < 0.1 < min(server.reputation[h] for h in HONEST)
            resumed = SemanticConsensus(cfg, names, PROMPTS, 3, embedder)
            resumed.restore([{"round": 1, "reputation": {"s0": 0.2}}, {"round": 2}])
            assert resumed.reputation == {"s0": 0.2}
        return out

    undefended, defended = shares(ConsensusConfig()), shares(ConsensusConfig(**defence))
    assert min(undefended) > 0
    assert defended[-1] < undefended[-1] and defended[-1] == 0
