"""Held-out evaluation per client and domain: reference NLL, ROUGE-L and embedding cosine of greedy
answers, MMLU accuracy by option log-likelihood, GSM8K exact match of the final number.

The metric functions are pure; ``evaluate_client`` runs the model through the same batched
generation and teacher-forced loss paths as training and the federation.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import torch

from semcon.data import Example
from semcon.generate import generate
from semcon.models import ChatFormat
from semcon.train import collate, mean_nll, response_nll, tokenize, TokenizedExample

LETTERS = "ABCD"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (``rouge-score``, stemmed)."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def final_number(text: str) -> str | None:
    """The answer number of a GSM8K-style text: after ``####`` when present, else the last number."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    value = found[0] if "####" in text else found[-1]
    value = value.replace(",", "").rstrip(".")
    return value[:-2] if value.endswith(".0") else value


def gsm8k_exact_match(prediction: str, reference: str) -> bool:
    gold = final_number(reference)
    return gold is not None and final_number(prediction) == gold


def mmlu_letter(response: str) -> str:
    """The correct option letter of an MMLU reference response such as ``"B. Paris"``."""
    return response.strip()[:1]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit-normalised embedding rows."""
    return (a * b).sum(-1)


@torch.inference_mode()
def option_logprobs(model, fmt: ChatFormat, instruction: str, options: str, device, dtype) -> list[float]:
    """Sum log-probability of each option (e.g. "A".."D") as the start of the answer, as
    lm-evaluation-harness scores multiple choice."""
    prompt = fmt.prompt_ids(instruction)
    rows = []
    for opt in options:
        cont = fmt.tok(opt, add_special_tokens=False)["input_ids"]
        rows.append(TokenizedExample(prompt + cont, [-100] * len(prompt) + cont))
    batch = collate(rows, fmt.tok.pad_token_id, device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        nll, where = response_nll(model, batch)
    sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, where, nll.double())
    return (-sums).tolist()


def evaluate_client(model, fmt: ChatFormat, eval_sets: dict[str, list[Example]], *, embed, max_length: int,
                    batch_size: int, generate_answers: bool, max_new_tokens: int, gen_batch_size: int,
                    device, dtype) -> dict[str, dict[str, float]]:
    """Every metric that applies to each domain: ``{domain: {metric: value}}``."""
    out: dict[str, dict[str, float]] = {}
    for domain, rows in eval_sets.items():
        if not rows:
            continue
        toks = tokenize(fmt, [(e.instruction, e.response, 1.0) for e in rows], max_length)
        m = {"nll": mean_nll(model, fmt, toks, batch_size=batch_size, device=device, dtype=dtype)}
        if generate_answers:
            answers = [g.text for g in generate(model, fmt, [e.instruction for e in rows], max_new_tokens=max_new_tokens,
                                                batch_size=gen_batch_size, device=device, dtype=dtype)]
            refs = [e.response for e in rows]
            m["rouge_l"] = float(np.mean([rouge_l(a, r) for a, r in zip(answers, refs)]))
            if embed is not None:
                m["cosine"] = float(np.mean(cosine(embed(answers), embed(refs))))
            if rows[0].domain.startswith("gsm8k"):
                m["exact_match"] = float(np.mean([gsm8k_exact_match(a, r) for a, r in zip(answers, refs)]))
        if rows[0].domain.startswith("mmlu"):
            hits = [int(np.argmax(option_logprobs(model, fmt, e.instruction, LETTERS, device, dtype)))
                    == LETTERS.index(mmlu_letter(e.response)) for e in rows]
            m["accuracy"] = float(np.mean(hits))
        out[domain] = {k: round(v, 5) for k, v in m.items()}
    return out
