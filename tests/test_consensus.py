import numpy as np
import pytest

from semcon.consensus import medoid_loop, normalize, semantic_medoid


def random_unit(p, n, d=16, seed=0):
    return normalize(np.random.default_rng(seed).normal(size=(p, n, d)))


def test_matches_pairwise_loop_and_centroid_identity():
    emb = random_unit(50, 7)
    got = semantic_medoid(emb).choice
    assert (got == medoid_loop(emb)).all()
    # the medoid is the answer nearest the centroid
    centroid = emb.mean(axis=1)
    assert (got == np.argmax(np.einsum("pnd,pd->pn", emb, centroid), axis=1)).all()


def test_order_invariant():
    emb = random_unit(20, 5, seed=1)
    perm = np.array([3, 0, 4, 1, 2])
    base = semantic_medoid(emb)
    permuted = semantic_medoid(emb[:, perm])
    assert (perm[permuted.choice] == base.choice).all()
    np.testing.assert_allclose(permuted.agreement, base.agreement)


def test_identical_answers_pick_lowest_id_with_full_agreement():
    v = normalize(np.ones((1, 1, 8)))
    emb = np.repeat(v, 4, axis=1)
    res = semantic_medoid(emb)
    assert res.choice[0] == 0
    assert res.agreement[0] == pytest.approx(1.0)


def test_outlier_never_chosen():
    rng = np.random.default_rng(2)
    center = normalize(rng.normal(size=(10, 1, 32)))
    close = normalize(center + 0.05 * rng.normal(size=(10, 4, 32)))
    outlier = -center
    for pos in range(5):
        emb = np.insert(close, pos, outlier[:, 0], axis=1)
        assert (semantic_medoid(emb).choice != pos).all()


def test_ties_between_different_texts_go_by_confidence_else_seeded_random():
    a, b = normalize(np.array([1.0, 0.0])), normalize(np.array([0.0, 1.0]))
    emb = np.repeat(np.array([[a, b]]), 64, axis=0)  # 64 prompts, two different answers each: all ties
    first = semantic_medoid(emb, tie_seed=(7, 1)).choice
    assert set(first) == {0, 1}  # never a fixed client
    assert (semantic_medoid(emb, tie_seed=(7, 1)).choice == first).all()  # seeded per prompt and round
    assert (semantic_medoid(emb, tie_seed=(7, 2)).choice != first).any()
    conf = np.tile([-0.5, -0.1], (64, 1))
    assert (semantic_medoid(emb, confidence=conf).choice == 1).all()  # the more confident answer
    same = np.repeat(np.array([[a, a, b]]), 8, axis=0)  # identical texts outscore b: the lowest of them
    assert (semantic_medoid(same, tie_seed=(1, 1)).choice == 0).all()


def test_invalid_answers_are_ignored_and_empty_prompts_get_no_label():
    emb = random_unit(3, 4, seed=3)
    valid = np.ones((3, 4), dtype=bool)
    valid[0, :] = False  # nobody answered prompt 0
    valid[1, [0, 1, 2]] = False  # only client 3 answered prompt 1
    valid[2, 0] = False
    res = semantic_medoid(emb, valid)
    assert res.choice[0] == -1 and np.isnan(res.agreement[0])
    assert res.choice[1] == 3 and res.agreement[1] == 1.0
    assert res.choice[2] != 0
    assert list(res.valid_count) == [0, 1, 3]


def test_threshold_drops_low_agreement():
    emb = random_unit(30, 6, d=64, seed=4)  # random directions: agreement near 0
    res = semantic_medoid(emb, threshold=0.9)
    assert (res.choice == -1).all()
    agree = np.repeat(normalize(np.ones((1, 1, 8))), 3, axis=1)
    assert semantic_medoid(agree, threshold=0.9).choice[0] == 0


def test_no_answers_at_all():
    res = semantic_medoid(np.zeros((4, 0, 8)))
    assert (res.choice == -1).all() and (res.valid_count == 0).all()
