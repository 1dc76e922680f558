import numpy as np
import pytest

from semcon.config import ConsensusConfig
from semcon.data import Prompt
from semcon.protocol import Download, Upload
from semcon.server import Server

PROMPTS = [Prompt("p0000", "What is the capital of France?", "x"), Prompt("p0001", "Name a fruit.", "x")]


@pytest.fixture(scope="module")
def server(embedder):
    return Server(ConsensusConfig(), ["a", "b", "c", "d"], embedder=embedder)


def up(client, answers, round=1):
    return Upload(round=round, client=client, answers=answers)


def test_majority_meaning_wins_and_outlier_loses(server):
    payloads = {
        "a": up("a", {"p0000": "Paris is the capital of France.", "p0001": "An apple."}),
        "b": up("b", {"p0000": "The capital of France is Paris.", "p0001": "Banana"}),
        "c": up("c", {"p0000": "I like turtles and submarines.", "p0001": "An apple is a fruit."}),
        "d": up("d", {"p0000": "France's capital city is Paris.", "p0001": ""}),
    }
    res = server.aggregate(1, PROMPTS, payloads)
    by_id = {lab.prompt_id: lab for lab in res.labels}
    assert by_id["p0000"].client in {"a", "b", "d"} and "Paris" in by_id["p0000"].text
    assert by_id["p0001"].answers == 3  # d's empty answer sits out
    assert res.download.labels == {lab.prompt_id: lab.text for lab in res.labels}
    assert 0 < res.mean_agreement < 1 and res.rejected == {}


def test_identical_texts_pick_lowest_client(server):
    same = {"p0000": "Paris.", "p0001": "Apple."}
    res = server.aggregate(1, PROMPTS, {n: up(n, same) for n in ("d", "b", "c")})
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
    res = server.aggregate(1, PROMPTS, payloads)
    assert res.accepted == ["a"]
    assert set(res.rejected) == {"b", "c", "d"}
    assert "round 7 instead of 1" in res.rejected["c"] and "characters" in res.rejected["d"]
    assert "expected an upload" in res.rejected["b"]
    assert "client 'b'" in caplog.text
    assert len(res.labels) == 2 and np.isclose(res.labels[0].agreement, 1.0)


def test_prompt_with_no_valid_answer_has_no_label(server):
    payloads = {n: up(n, {"p0000": "Paris.", "p0001": "  "}) for n in ("a", "b")}
    res = server.aggregate(1, PROMPTS, payloads)
    assert [lab.prompt_id for lab in res.labels] == ["p0000"]
    assert res.unlabelled == ["p0001"] and "p0001" not in res.download.labels
