"""The competence signals: calibration, quantization, validation, and what clients send on a tiny model."""

import numpy as np
import pytest

from semcon.consensus import normalize
from semcon.member.competence import ecdf, gain_competence, knn_competence, knn_similarity, quantize
from semcon.protocol import Upload, validate_upload


def test_ecdf_is_the_share_at_or_below():
    np.testing.assert_allclose(ecdf(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.0, 2.5, 9.0])),
                               [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(ecdf(np.array([]), np.array([1.0, 2.0])), [0.5, 0.5])


def test_knn_ranks_a_prompt_like_the_private_data_above_an_unrelated_one():
    rng = np.random.default_rng(0)
    center = normalize(rng.normal(size=(1, 32)))
    private = normalize(center + 0.3 * rng.normal(size=(20, 32)))
    near, far = normalize(center + 0.3 * rng.normal(size=(1, 32))), normalize(rng.normal(size=(1, 32)))
    score = knn_competence(private, np.concatenate([near, far]), k=3)
    assert 0.2 < score[0] <= 1.0 and score[1] == 0.0
    # leave-one-out: a row is never its own neighbour
    assert (knn_similarity(private, private, 1, leave_one_out=True) < 0.999).all()


def test_one_scale_across_clients_with_different_data():
    """A client whose data is spread out and one whose data is tight both rate their own typical prompt
    near the middle, though their raw similarities differ widely."""
    rng = np.random.default_rng(1)
    center = normalize(rng.normal(size=(1, 32)))
    for spread in (0.1, 1.0):
        private = normalize(center + spread * rng.normal(size=(200, 32)))
        typical = normalize(center + spread * rng.normal(size=(50, 32)))
        assert 0.3 < knn_competence(private, typical, k=5).mean() < 0.7, spread


def test_gain_is_calibrated_against_private_responses():
    np.testing.assert_allclose(gain_competence(np.array([-1.0, 0.5, 5.0]), np.array([0.0, 1.0])), [0.0, 0.5, 1.0])


def test_quantize_to_levels():
    np.testing.assert_allclose(quantize(np.array([0.0, 0.2, 0.5, 0.74, 1.0]), 4), [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(quantize(np.array([0.3]), None), [0.3])
    assert set(np.unique(quantize(np.random.default_rng(0).random(1000), 2))) == {0.0, 1.0}


def upload(competence):
    ids = ["p0", "p1"]
    return Upload(1, "a", dict.fromkeys(ids, "text"), dict.fromkeys(ids, True), competence=competence)


@pytest.mark.parametrize(("competence", "needle"), [
    ({"knn": {"p0": 0.5}}, "one number per answer"),
    ({}, "one number per answer"),
    ({"knn": {"p0": 0.5, "p1": 1.5}}, "in [0, 1]"),
    ({"knn": {"p0": 0.5, "p1": float("nan")}}, "in [0, 1]"),
    ({"knn": {"p0": 0.5, "p1": 0.5}, "gain": {"p0": 0.1, "p1": 0.1}}, "'gain' was not asked for"),
])
def test_competence_is_validated(competence, needle):
    problems = validate_upload(upload(competence), client="a", round=1, prompt_ids={"p0", "p1"}, max_chars=100,
                               signals=["knn"])
    assert any(needle in p for p in problems), problems
    assert not validate_upload(upload({"knn": {"p0": 0.0, "p1": 1.0}}), client="a", round=1,
                               prompt_ids={"p0", "p1"}, max_chars=100, signals=["knn"])


def test_clients_send_both_signals_quantized_and_an_attacker_inflates(kept_run):
    """On a tiny model: every answer carries knn and gain on 4 levels, counted in the ledger; the attacking client
    (math: inflate_competence with a constant text) sends 1.0 everywhere and its one text."""
    from conftest import rows

    uploads = rows(kept_run / "uploads" / "round_01.jsonl")
    honest = [r for r in uploads if r["client"] == "geo"]
    assert honest and all(set(r["competence"]) == {"knn", "gain"} for r in honest)
    assert {v for r in honest for v in r["competence"].values()} <= {0.0, 0.33333, 0.66667, 1.0}
    attacker = [r for r in uploads if r["client"] == "math"]
    assert {r["text"] for r in attacker} == {"The mitochondria is the powerhouse of the cell, and bananas are berries."}
    assert all(v == 1.0 for r in attacker for v in r["competence"].values())
    assert all(r.get("digest") for r in rows(kept_run / "ledger.jsonl") if r["kind"] == "upload")


def test_the_codec_carries_competence():
    from semcon.protocol import decode, encode, text_limits

    msg = upload({"knn": {"p0": 0.25, "p1": 1.0}, "gain": {"p0": 0.0, "p1": 0.5}})
    assert decode(encode(msg), text_limits(2, 100)) == msg
    assert len(encode(msg)) > len(encode(upload({})))  # and the ledger counts the bytes it costs
