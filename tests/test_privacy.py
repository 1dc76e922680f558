"""The output-privacy audit and the upload filter (``privacy.py``): detectors and exposure on fixed numbers, the
filter on planted text, and the audit measured every round of a tiny federation."""

import json
import math

import numpy as np
import pytest
import yaml

from semcon.data import Example
from semcon.data.canaries import FISHING_CONTEXT, canaries, fishing_prompts, plant
from semcon.member.privacy import NgramIndex, candidates, exposure, filter_answers, found, redact, withheld_flags


def test_canaries_are_unique_deterministic_and_planted_repeatedly():
    planted = canaries(5, seed=3)
    assert planted == canaries(5, seed=3) != canaries(5, seed=4)
    assert len({c.account for c in planted}) == len({c.code for c in planted}) == 5
    codes = candidates(planted[0], 50, seed=3)
    assert len(set(codes)) == 50 and planted[0].code not in codes
    private = [Example("e0", "q", "a", "c", "wiki:Geography")]
    rows = plant(private, planted, repeats=3)
    assert len(rows) == 1 + 15 and rows[0] == private[0]
    assert sum(r.response == planted[2].sentence() for r in rows) == 3 and {r.domain for r in rows} == {"wiki:Geography"}


def test_fishing_prompts_ask_for_every_canary_three_ways_and_by_context_alone():
    planted = canaries(3, seed=2)
    prompts = fishing_prompts(planted)
    assert len(prompts) == 3 * 3 + len(FISHING_CONTEXT) and len({p.id for p in prompts}) == len(prompts)
    for c in planted:
        mine = [p for p in prompts if p.id.endswith(f"-{c.account}")]
        assert [p.id.split("-")[1] for p in mine] == ["question", "paraphrase", "prefix"]
        assert mine[0].instruction == plant([Example("e", "q", "a", "c", "d")], [c], 1)[1].instruction  # as planted
        assert all(c.account in p.instruction and c.code not in p.instruction for p in mine)
    assert not any(c.account in p.instruction for c in planted for p in prompts[-len(FISHING_CONTEXT):])


def test_found_verbatim_and_near_verbatim_but_not_elsewhere():
    c = canaries(1, seed=0)[0]
    assert found(c, f"Sure: {c.sentence()}")
    near = c.code[:-1] + str((int(c.code[-1]) + 1) % 10)  # one digit wrong
    assert found(c, f"the code is {near}")
    assert not found(c, "The capital of France is Paris. Call 12 times.")
    assert sum(found(c, f"code {other}") for other in candidates(c, 50, seed=0)) <= 2  # another random code: rarely
    assert not found(c, "")


def test_exposure_on_fixed_numbers():
    assert exposure(-1.0, np.array([-2.0, -3.0, -4.0])) == pytest.approx(2.0)  # preferred to all: log2(4)
    assert exposure(-5.0, np.array([-2.0, -3.0, -4.0])) == pytest.approx(0.0)  # the least likely
    assert exposure(-2.5, np.array([-2.0, -3.0, -4.0])) == pytest.approx(2 - 1)  # rank 2
    assert exposure(-1.0, np.full(999, -2.0)) == pytest.approx(math.log2(1000))


def test_pii_is_redacted_and_plain_text_is_not():
    text, n = redact("Write to ana.lopez@example.org or call +44 20 7946 0958; IBAN GB33 BUKB 2020 1555 5555 55, "
                     "card 4111 1111 1111 1111, code 7391-2284.")
    assert n == 5 and "@" not in text and "7946" not in text and "4111" not in text and "7391" not in text
    assert "[email]" in text and "[iban]" in text and "[card]" in text
    plain = "In 1998, 3 rivers met near the city of Lyon."
    assert redact(plain) == (plain, 0)


def test_the_ngram_filter_withholds_a_planted_canary_and_keeps_unrelated_text():
    c = canaries(1, seed=1)[0]
    private = ["The heart has four chambers and pumps blood.", c.sentence()]
    index = NgramIndex(private, n=8)
    answers = {"p0": f"I recall that {c.sentence().lower()} Thanks.", "p1": "Rivers flow downhill to the sea.",
               "p2": "The heart has four chambers"}  # 5 words in a row: under the run of 8
    out = filter_answers(answers, ["ngram", "pii"], index)
    assert out.answers["p0"] == "" and out.withheld == 1
    assert out.answers["p1"] == answers["p1"] and out.answers["p2"] == answers["p2"] and out.redacted == 0
    assert withheld_flags({"p0": True, "p1": True, "p2": False}, out) == {"p0": False, "p1": True, "p2": False}


@pytest.mark.long(60)
def test_the_audit_is_measured_every_round_for_text_and_weight_exchange(tiny_llama_dir, tmp_path):
    """On a tiny model, the same canaries for semantic consensus (with the filter) and FedAvg: every round's row
    holds each client's counts and one exposure per canary in [0, log2(C+1)], and the report compares them."""
    from conftest import cli, rows, tiny_tree

    tree = tiny_tree(str(tiny_llama_dir), privacy={"canaries": 2, "repeats": 4, "candidates": 7, "client": "math",
                                                   "filter": ["ngram", "pii"], "fishing": True},
                     public={"num_prompts": 12})  # 10 prompts fish for the canaries, 2 from the domains
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tree))
    result = cli("compare", path, "--methods", "semantic_consensus,fedavg", "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    for method, last in (("semantic_consensus", 1), ("fedavg", 2)):
        run = tmp_path / "cmp" / method / "seed-0"
        per_round = [r for r in rows(run / "metrics.jsonl") if r.get("event", "round") == "round"]
        assert [r["round"] for r in per_round] == list(range(last + 1))
        for r in per_round:
            assert set(r["privacy"]) == {"geo", "math"}, (method, r["round"])
            for v in r["privacy"].values():
                assert len(v["exposure"]) == 2 and all(0 <= x <= 3 for x in v["exposure"])
                assert {"uploaded", "received", "completed", "withheld", "redacted"} <= set(v)
        assert json.loads((run / "summary.json").read_text())["canary_client"] == "math"
    uploads = rows(tmp_path / "cmp" / "semantic_consensus" / "seed-0" / "uploads" / "round_01.jsonl")
    assert {u["prompt_id"] for u in uploads} >= {p.id for p in fishing_prompts(canaries(2, 0))}  # asked and answered
    assert not any(found(c, u["text"]) for c in canaries(2, 0) for u in uploads)  # the filter let none through
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Output privacy" in report and "exposure, planting client" in report
