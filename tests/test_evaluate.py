"""Tests of semcon.member.evaluate: answer extraction, generation caps, multiple choice prompts and scores, bits
per byte, and metrics chosen by each row's task."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
import torch
from conftest import tiny_tree

from semcon.config import EvalConfig
from semcon.data import Example, choice_row
from semcon.member import evaluate
from semcon.member.evaluate import (
    answer_letter,
    choice_accuracy,
    choice_ids,
    continuation_logprobs,
    evaluate_client,
    final_number,
    generation_cap,
    gsm8k_exact_match,
    lm_eval_prompt,
    reference_scores,
    rouge_l,
)
from semcon.member.generate import Generation


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from semcon.member.models import Backbone

    return Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))


def choice_example(question: str, choices: tuple[str, ...], letter: str, category: str, domain: str) -> Example:
    r = choice_row("1", question, choices, letter, category)
    return Example(f"{domain}:1", r.instruction, r.response, r.category, domain, r.task, r.question, r.choices)


ASTRONOMY = choice_example("  Which planet is largest?\n", ("Mars", "Jupiter", "Venus", "Earth"), "B",
                           "high_school_astronomy", "medicine")


def test_rouge_l_known_values():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("completely different words", "the cat sat on the mat") == 0.0
    # LCS "the cat the mat" = 4 of 6 reference and 4 of 5 prediction tokens: F = 2PR/(P+R)
    p, r = 4 / 5, 4 / 6
    assert rouge_l("the cat and the mat", "the cat sat on the mat") == pytest.approx(2 * p * r / (p + r))


@pytest.mark.parametrize("text, number", [
    ("She pays 5 + 3 = <<5+3=8>>8 dollars.\n#### 8", 8),
    ("#### 1,234", 1234),
    ("So the answer is 42.", 42),
    ("It costs $3.50, then 7.0 in total", 7),
    ("-12 degrees", -12),
    ("no number here", None),
])
def test_final_number(text, number):
    assert final_number(text) == number


def test_final_number_trailing_zeros():
    assert final_number("She pays 18.00 in total") == Decimal(18)


def test_final_number_dollars_and_commas():
    assert final_number("It costs $1,000") == Decimal(1000)


def test_final_number_negative_dollars():
    assert final_number("She loses -$5") == Decimal(-5)


def test_final_number_minus_with_space_is_an_operator():
    assert final_number("16 - 3 = 13") == Decimal(13)
    assert final_number("16 - 3") == Decimal(3)
    assert final_number("16-3") == Decimal(3)


def test_final_number_after_hashes():
    assert final_number("Worked: 3 + 4 = 7, then 12.\n#### 42") == Decimal(42)


def test_gsm8k_exact_match():
    ref = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18"
    assert gsm8k_exact_match("9 eggs at $2 each, so she makes 18 dollars.", ref)
    assert gsm8k_exact_match("She makes $18.00.", ref)
    assert not gsm8k_exact_match("She makes 18 dollars per egg, 9 eggs.", ref)
    assert not gsm8k_exact_match("I don't know", ref)


def test_answer_letter():
    assert answer_letter("B. Paris") == "B"


@pytest.mark.parametrize("lengths, numeric, cap", [
    ([100] * 20, False, 125),
    ([10] * 19 + [1000], False, 75),  # one outlier: 95th percentile 10 + 0.05 * 990 = 59.5, x 1.25, rounded up
    ([10] * 100, True, 256),
    ([400] * 10, True, 500),
    ([3000], False, 1024),
    ([], False, 1),
])
def test_generation_cap(lengths, numeric, cap):
    assert generation_cap(lengths, numeric) == cap


def test_generation_cap_is_the_95th_percentile_times_1_25():
    lengths = list(range(1, 101))  # 95th percentile 95.05
    assert generation_cap(lengths, False) == math.ceil(95.05 * 1.25)


def test_lm_eval_prompt_text():
    assert lm_eval_prompt(ASTRONOMY) == (
        "The following are multiple choice questions (with answers) about high school astronomy.\n\n"
        "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:")


def test_lm_eval_prompt_letters_follow_the_choices():
    e = choice_example("Pick.", ("x", "y", "z", "u", "v"), "E", "default", "mine")
    assert lm_eval_prompt(e).endswith("about mine.\n\nPick.\nA. x\nB. y\nC. z\nD. u\nE. v\nAnswer:")
    assert e.response == "E. v"
    assert e.instruction.endswith("\nE. v\nAnswer with the letter of the correct option.")


def test_choice_ids(tiny):
    fmt = tiny.fmt
    context, conts = choice_ids(fmt, ASTRONOMY, "lm_eval")
    assert context == fmt.tok(lm_eval_prompt(ASTRONOMY))["input_ids"]  # SmolLM2's tokenizer adds no BOS
    assert [fmt.tok.decode(c) for c in conts] == [" A", " B", " C", " D"]
    context, conts = choice_ids(fmt, ASTRONOMY, "chat")
    assert context == fmt.prompt_ids(ASTRONOMY.instruction)
    assert [fmt.tok.decode(c) for c in conts] == ["A", "B", "C", "D"]


@pytest.mark.parametrize("prompt", ["chat", "lm_eval"])
def test_continuation_logprobs_match_full_sequence_scores(tiny, prompt):
    fmt = tiny.fmt
    context, conts = choice_ids(fmt, ASTRONOMY, prompt)
    scores = continuation_logprobs(tiny.model, fmt, context, conts, tiny.device, tiny.dtype)
    for cont, score in zip(conts, scores):
        with torch.no_grad():
            logits = tiny.model(input_ids=torch.tensor([context + cont])).logits[0, :-1]
        logp = torch.log_softmax(logits.float(), -1)
        want = sum(logp[len(context) - 1 + k, t].item() for k, t in enumerate(cont))
        assert score == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("prompt", ["chat", "lm_eval"])
def test_choice_accuracy_is_the_argmax_share(tiny, prompt):
    rows = [ASTRONOMY, choice_example("2+2?", ("3", "4"), "B", "math", "medicine"),
            choice_example("Sky?", ("blue", "green", "red"), "A", "world", "medicine")]
    hits = 0
    for e in rows:
        context, conts = choice_ids(tiny.fmt, e, prompt)
        scores = continuation_logprobs(tiny.model, tiny.fmt, context, conts, tiny.device, tiny.dtype)
        assert len(scores) == len(e.choices)
        hits += scores.index(max(scores)) == "ABC".index(e.response[0])
    assert choice_accuracy(tiny.model, tiny.fmt, rows, prompt, tiny.device, tiny.dtype) == pytest.approx(hits / 3)


def test_chat_accuracy_comes_from_the_reference_forward_and_equals_choice_accuracy(tiny, monkeypatch):
    rows = [choice_example(f"Question {i}: which one is it?", ("alpha", "beta", "gamma", "delta"), "ABCD"[i % 4],
                           "misc", "medicine") for i in range(8)]
    chat = Example("c:1", "Hi?", "Hello there.", "default", "medicine")
    kw = {"batch_size": 3, "device": tiny.device, "dtype": tiny.dtype}
    alone = [choice_accuracy(tiny.model, tiny.fmt, [e], "chat", tiny.device, tiny.dtype) for e in rows]
    assert 0 < sum(alone) < len(rows)  # some right, some wrong: the comparison below can fail
    plain = reference_scores(tiny.model, tiny.fmt, rows + [chat], **kw)

    def second_forward(*args):
        raise AssertionError("the chat prompt's options come from the reference forward")

    monkeypatch.setattr(evaluate, "choice_accuracy", second_forward)
    for e, want in zip(rows, alone):
        assert reference_scores(tiny.model, tiny.fmt, [e, chat], mmlu_prompt="chat", **kw)["accuracy"] == want
    m = reference_scores(tiny.model, tiny.fmt, rows + [chat], mmlu_prompt="chat", **kw)
    assert m["accuracy"] == pytest.approx(sum(alone) / len(rows))
    assert m["nll"] == pytest.approx(plain["nll"]) and m["bpb"] == pytest.approx(plain["bpb"])
    with pytest.raises(AssertionError, match="reference forward"):  # lm-eval's prompt is another context
        reference_scores(tiny.model, tiny.fmt, rows, mmlu_prompt="lm_eval", **kw)


def test_bits_per_byte_of_a_known_string(tiny):
    fmt, model = tiny.fmt, tiny.model
    instruction, response = "Say hello in Greek.", "Γειά σου, κόσμε: ναι"
    assert len(response.encode()) > len(response)
    ids, labels = fmt.example_ids(instruction, response, None, end=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
    picked = [(i, t) for i, t in enumerate(labels[1:]) if t != -100]
    sum_nll = -sum(logp[i, t].item() for i, t in picked)
    assert fmt.tok.decode([t for _, t in picked]) == response  # end-of-turn excluded
    rows = [Example("g:1", instruction, response, "default", "g")]
    m = reference_scores(model, fmt, rows, batch_size=2, device=tiny.device, dtype=tiny.dtype)
    assert m["bpb"] == pytest.approx(sum_nll / math.log(2) / len(response.encode()), rel=1e-5)
    assert m["nll"] == pytest.approx(sum_nll / len(picked), rel=1e-5)


def test_metrics_follow_the_task_not_the_label(tiny, monkeypatch):
    calls = []

    def fake_generate(model, fmt, prompts, *, max_new_tokens, **kw):
        calls.append((prompts, max_new_tokens))
        return [Generation("#### 18", [], True, 0.0) for _ in prompts]

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    numeric = [Example(f"n:{i}", f"Sum {i}?", f"Add them.\n#### {18 if i else 7}", "math", "mmlu_x", "numeric")
               for i in range(3)]
    eval_sets = {"medicine": [ASTRONOMY], "mmlu_x": numeric,
                 "chat": [Example("c:1", "Hi?", "Hello there.", "default", "chat")]}
    out = evaluate_client(tiny.model, tiny.fmt, eval_sets, EvalConfig(generate_items=2), embed=None,
                          gen_batch_size=4, device=tiny.device, dtype=tiny.dtype)
    assert 0 <= out["medicine"]["accuracy"] <= 1 and "exact_match" not in out["medicine"]
    assert out["mmlu_x"]["exact_match"] == 0.5 and "accuracy" not in out["mmlu_x"]  # rows 0 and 1 only
    assert set(out["chat"]) == {"nll", "bpb", "bpb_plain", "rouge_l"}
    assert set(out["medicine"]) == {"nll", "bpb", "bpb_plain", "accuracy"}  # multiple choice: not answered
    (prompts, caps), = calls  # every domain's rows in one queue, each row with its domain's cap
    cap = dict(zip(prompts, caps))
    assert cap["Sum 0?"] == cap["Sum 1?"] == 256 and "Sum 2?" not in cap  # numeric rows: at least 256 new tokens
    assert cap["Hi?"] == generation_cap([len(tiny.fmt.tok("Hello there.")["input_ids"])], False)
    calls.clear()
    evaluate_client(tiny.model, tiny.fmt, {"mmlu_x": numeric}, EvalConfig(max_new_tokens=9, generate_items=5),
                    embed=None, gen_batch_size=4, device=tiny.device, dtype=tiny.dtype)
    assert calls == [(["Sum 0?", "Sum 1?", "Sum 2?"], [9, 9, 9])]


def test_evaluate_client_generates_on_the_tiny_model(tiny):
    chat = [Example("c:1", "Hi?", "Hello there.", "default", "chat")]
    out = evaluate_client(tiny.model, tiny.fmt, {"medicine": [ASTRONOMY], "chat": chat},
                          EvalConfig(max_new_tokens=4, mmlu_prompt="lm_eval"), embed=None, gen_batch_size=2,
                          device=tiny.device, dtype=tiny.dtype)
    assert set(out["medicine"]) == {"nll", "bpb", "bpb_plain", "accuracy"} and "rouge_l" in out["chat"]
    assert out["medicine"]["accuracy"] in (0.0, 1.0) and out["medicine"]["bpb"] > 0


def test_plain_bits_per_byte_leave_out_gsm8k_calculator_annotations(tiny):
    from semcon.data import without_annotations

    annotated = "She pays 4*33=<<4*33=132>>132 dollars.\n#### 132"
    assert without_annotations(annotated) == "She pays 4*33=132 dollars.\n#### 132"
    rows = [Example("m:1", "How much?", annotated, "default", "gsm8k", "numeric"),
            Example("m:2", "And now?", "Nothing changes here.", "default", "gsm8k", "numeric")]
    plain = [Example(e.id, e.instruction, without_annotations(e.response), e.category, e.domain, e.task) for e in rows]
    kw = {"batch_size": 2, "device": tiny.device, "dtype": tiny.dtype}
    m, stripped = reference_scores(tiny.model, tiny.fmt, rows, **kw), reference_scores(tiny.model, tiny.fmt, plain, **kw)
    assert m["bpb_plain"] == pytest.approx(stripped["bpb"], rel=1e-6) and m["bpb_plain"] != m["bpb"]
    assert stripped["bpb_plain"] == stripped["bpb"]


def test_clients_evaluated_together_score_as_they_would_alone(tiny_llama_dir):
    """Three clients on one base (two with distinct adapters, one still the base model) answer the generation
    rows in shared batches: every metric equals the client's own evaluation."""
    from semcon.config import load_config
    from semcon.member.client import evaluate_together
    from semcon.transport.assembly import assemble

    tree = tiny_tree(str(tiny_llama_dir), eval={"max_new_tokens": 6, "generate": True})
    tree["clients"] = tree["clients"] + [{"name": "chat", "model": str(tiny_llama_dir), "data": {"source": "chatterbot"}}]
    fed = assemble(load_config(tree=tree))
    for i, c in enumerate(fed.clients[:2]):
        torch.manual_seed(20 + i)
        c.backbone.load_adapter_state(c.name, {k: torch.randn_like(v) * 0.5
                                               for k, v in c.backbone.adapter_state(c.name).items()})
    together = evaluate_together(fed.clients, fed.eval_sets)
    alone = {c.name: c.evaluate(fed.eval_sets) for c in fed.clients}
    assert together == alone
    assert all("rouge_l" in m for m in alone["geo"].values()) and alone["geo"] != alone["math"]
