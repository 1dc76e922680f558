import numpy as np
import pytest
import torch

from semcon.evaluate import final_number, gsm8k_exact_match, mmlu_letter, option_logprobs, rouge_l


def test_rouge_l_known_values():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("completely different words", "the cat sat on the mat") == 0.0
    # LCS "the cat the mat" = 4 of 6 reference and 4 of 5 prediction tokens: F = 2PR/(P+R)
    p, r = 4 / 5, 4 / 6
    assert rouge_l("the cat and the mat", "the cat sat on the mat") == pytest.approx(2 * p * r / (p + r))


@pytest.mark.parametrize("text, number", [
    ("She pays 5 + 3 = <<5+3=8>>8 dollars.\n#### 8", "8"),
    ("#### 1,234", "1234"),
    ("So the answer is 42.", "42"),
    ("It costs $3.50, then 7.0 in total", "7"),
    ("-12 degrees", "-12"),
    ("no number here", None),
])
def test_final_number(text, number):
    assert final_number(text) == number


def test_gsm8k_exact_match():
    ref = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18"
    assert gsm8k_exact_match("9 eggs at $2 each, so she makes 18 dollars.", ref)
    assert not gsm8k_exact_match("She makes 18 dollars per egg, 9 eggs.", ref)
    assert not gsm8k_exact_match("I don't know", ref)


def test_mmlu_letter():
    assert mmlu_letter("B. Paris") == "B"


def test_option_logprobs_match_full_sequence_scores(tiny_llama_dir):
    from semcon.models import Backbone

    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    scores = option_logprobs(bb.model, fmt, "Pick one.\nA. x\nB. y\nC. z\nD. w", "ABCD", bb.device, bb.dtype)
    prompt = fmt.prompt_ids("Pick one.\nA. x\nB. y\nC. z\nD. w")
    for letter, score in zip("ABCD", scores):
        cont = fmt.tok(letter, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            logp = torch.log_softmax(bb.model(input_ids=ids).logits[0, :-1].float(), -1)
        want = sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(cont))
        assert score == pytest.approx(want, abs=1e-4)
    assert int(np.argmax(scores)) in range(4)
