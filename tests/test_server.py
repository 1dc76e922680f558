import numpy as np
import pytest

from semcon.config import ConsensusConfig
from semcon.coordinator.server import Answers, SemanticConsensus, choose, is_degenerate
from semcon.data import Prompt
from semcon.protocol import Download, Upload

PROMPTS = [Prompt("p0000", "What is the capital of France?", "x"), Prompt("p0001", "Name a fruit.", "x")]


def consensus(embedder, prompts=PROMPTS, cfg=None, clients=("a", "b", "c", "d"), seed=0):
    return SemanticConsensus(cfg or ConsensusConfig(), list(clients), prompts, rounds=1, embedder=embedder, seed=seed)


@pytest.fixture(scope="module")
def server(embedder):
    return consensus(embedder)


def up(client, answers, round=1):
    return Upload(round=round, client=client, answers=answers, finished=dict.fromkeys(answers, True))


def test_majority_meaning_wins_and_outlier_loses(server):
    payloads = {
        "a": up("a", {"p0000": "Paris is the capital of France.", "p0001": "An apple."}),
        "b": up("b", {"p0000": "The capital of France is Paris.", "p0001": "Banana"}),
        "c": up("c", {"p0000": "I like turtles and submarines.", "p0001": "An apple is a fruit."}),
        "d": up("d", {"p0000": "France's capital city is Paris.", "p0001": ""}),
    }
    res = server.aggregate(1, payloads)
    by_id = {lab.prompt_id: lab for lab in res.labels}
    assert by_id["p0000"].client in {"a", "b", "d"} and "Paris" in by_id["p0000"].text
    assert by_id["p0001"].answers == 3  # d's empty answer sits out
    assert res.download.labels == {lab.prompt_id: lab.text for lab in res.labels}
    assert 0 < res.metrics["mean_agreement"] < 1 and res.rejected == {}


def test_identical_texts_pick_lowest_client(server):
    same = {"p0000": "Paris.", "p0001": "Apple."}
    res = server.aggregate(1, {n: up(n, same) for n in ("d", "b", "c")})
    assert {lab.client for lab in res.labels} == {"b"}
    assert all(lab.agreement == pytest.approx(1.0, abs=1e-5) for lab in res.labels)


def test_invalid_uploads_are_rejected_and_the_round_goes_on(server, caplog):
    good = {"p0000": "Paris.", "p0001": "Apple."}
    payloads = {
        "a": up("a", good),
        "b": Download(round=1, labels=good),
        "c": up("c", good, round=7),
        "d": up("d", {"p0000": "Paris.", "p0001": "x" * 10_000}),
    }
    res = server.aggregate(1, payloads)
    assert res.accepted == ["a"]
    assert set(res.rejected) == {"b", "c", "d"}
    assert "round 7 instead of 1" in res.rejected["c"] and "characters" in res.rejected["d"]
    assert "expected an upload" in res.rejected["b"]
    assert "client 'b'" in caplog.text
    assert len(res.labels) == 2 and np.isclose(res.labels[0].agreement, 1.0)


def test_prompt_with_no_valid_answer_has_no_label(server):
    payloads = {n: up(n, {"p0000": "Paris.", "p0001": "  "}) for n in ("a", "b")}
    res = server.aggregate(1, payloads)
    assert [lab.prompt_id for lab in res.labels] == ["p0000"]
    assert res.metrics["unlabelled"] == 1 and "p0001" not in res.download.labels


def test_cut_and_degenerate_answers_are_no_candidates(server, embedder):
    answers = {"a": "The capital of France is Paris.", "b": "Paris is the capital of France.",
               "c": "The capital of France is Paris, a city", "d": "I'm sorry, " * 12}
    ups = {n: Upload(1, n, {"p0000": t, "p0001": "Apple."}, {"p0000": n != "c", "p0001": True})
           for n, t in answers.items()}
    res = server.aggregate(1, ups)
    label = next(lab for lab in res.labels if lab.prompt_id == "p0000")
    assert label.answers == 2 and label.client in {"a", "b"} and label.finished  # c was cut, d loops
    assert res.metrics["cut_share"] == {"a": 0.0, "b": 0.0, "c": 0.5, "d": 0.0}
    assert res.metrics["cut_share_by_domain"]["c"] == {"x": 0.5}
    assert res.metrics["degenerate_share"] == {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.5}
    assert res.download.finished == {"p0000": True, "p0001": True}
    asked = server.asked(1)
    picked = choose(server.cfg, asked, Answers.of(asked, ups, []), embedder, None, (0, 1))
    assert (picked.text_ids >= 0).all()  # no candidates, but embedded: every client's answers are measured alike
    keep = consensus(embedder, cfg=ConsensusConfig(truncated="keep", degenerate="keep"))
    only_cut = {"c": ups["c"], "d": Upload(1, "d", {"p0000": "", "p0001": "Pear."}, ups["d"].finished)}
    kept = keep.aggregate(1, only_cut)
    assert kept.download.finished["p0000"] is False and kept.labels[0].client == "c"  # kept, flagged as cut
    assert server.aggregate(1, only_cut).metrics["unlabelled"] == 1  # dropped by default


@pytest.mark.parametrize("text, looped", [
    ("I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry", True),
    ("the the the the the the the the the the the the", True),
    ("!!!!!!!!!!!!!!!!!!!!!!!!!!", True),
    ("Paris is the capital and most populous city of France, with an estimated population of two million.", False),
    ("Step 1: 3 + 4 = 7. Step 2: 7 * 2 = 14. Step 3: 14 - 1 = 13. #### 13", False),
    ("I'm sorry.", False),
])
def test_degenerate_answers(text, looped):
    assert is_degenerate(text) is looped


def test_two_clients_ties_go_by_confidence_else_seeded_random_never_a_fixed_client(embedder):
    prompts = [Prompt(f"p{i:04d}", f"Question {i}?", "x") for i in range(40)]
    ups = {n: Upload(1, n, {p.id: f"{n} answers {p.id} in its own words" for p in prompts},
                     {p.id: True for p in prompts}) for n in ("a", "b")}
    two = consensus(embedder, prompts, clients=("a", "b"), seed=3)
    chosen = [lab.client for lab in two.aggregate(1, ups).labels]
    assert {"a", "b"} <= set(chosen)  # seeded random: labels from both clients
    assert chosen == [lab.client for lab in two.aggregate(1, ups).labels]  # the same seed, the same pick
    assert chosen != [lab.client for lab in two.aggregate(2, ups).labels]  # another round, another draw
    conf = {"a": [-0.2 if i % 2 else -1.2 for i in range(40)], "b": [-0.9] * 40}  # a is surer on odd prompts
    ups = {n: Upload(1, n, u.answers, u.finished, {p.id: c for p, c in zip(prompts, conf[n])}) for n, u in ups.items()}
    by_conf = [lab.client for lab in two.aggregate(1, ups).labels]
    assert by_conf == ["b" if i % 2 == 0 else "a" for i in range(len(prompts))]  # the more confident answer


def test_consensus_quality_is_measured_against_held_back_references(embedder):
    prompts = [Prompt("p0000", "Capital of France?", "wiki", reference="Paris is the capital of France."),
               Prompt("p0001", "A fruit?", "wiki")]
    payloads = {
        "a": up("a", {"p0000": "The capital of France is Paris.", "p0001": "Apple."}),
        "b": up("b", {"p0000": "France's capital is Paris.", "p0001": "Pear."}),
        "c": up("c", {"p0000": "Submarines are yellow.", "p0001": "Fig."}),
    }
    q = consensus(embedder, prompts).aggregate(1, payloads).metrics["answer_quality"]
    assert q["prompts"] == 1 and set(q["clients"]) == {"a", "b", "c"}
    assert q["consensus"]["cosine"] > q["random"]["cosine"] > q["clients"]["c"]["cosine"]
    assert q["random"]["rouge_l"] == pytest.approx(np.mean([c["rouge_l"] for c in q["clients"].values()]), abs=1e-3)


def test_the_references_only_bound_labels_without_any_upload(embedder):
    prompts = [Prompt("p0000", "Capital of France?", "wiki", reference="Paris."), Prompt("p0001", "A fruit?", "wiki")]
    bound = consensus(embedder, prompts, ConsensusConfig(rule="oracle_reference"))
    assert bound.upload_phase is None and consensus(embedder).upload_phase == "generate"
    result = bound.aggregate(1, {})
    assert result.download.labels == {"p0000": "Paris."} and result.accepted == [] and result.uploads == []


def test_fresh_prompts_are_asked_and_accepted_round_by_round(embedder):
    from semcon.config import PublicConfig

    prompts = [Prompt(f"p{i:04d}", f"Question {i}?", "x") for i in range(4)]
    fresh = SemanticConsensus(ConsensusConfig(), ["a", "b"], prompts, rounds=2, embedder=embedder,
                              public=PublicConfig(num_prompts=2, per_round="fresh"))
    assert [p.id for p in fresh.asked(2)] == ["p0002", "p0003"]
    late = {n: up(n, {"p0002": "Yes.", "p0003": "No."}, round=2) for n in "ab"}
    assert fresh.aggregate(2, late).download.labels.keys() == {"p0002", "p0003"}
    early = fresh.aggregate(2, {n: up(n, {"p0000": "Yes.", "p0001": "No."}, round=2) for n in "ab"})
    assert early.accepted == [] and set(early.rejected) == {"a", "b"}
