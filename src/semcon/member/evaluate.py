"""Held-out evaluation per client and domain: reference NLL and bits per byte, ROUGE-L and embedding cosine
of greedy answers, accuracy of multiple choice rows by option log-likelihood, exact match of numeric rows'
final number.

Which metrics apply follows each row's ``task`` (set by its data source), not the domain's label. The
metric functions are pure; ``evaluate_client`` runs the model through the same batched generation and
teacher-forced loss paths as training and the federation.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
import torch

from semcon.config import EvalConfig
from semcon.data import DEFAULT_CATEGORY, LETTERS, Example, final_number, without_annotations
from semcon.member.generate import generate
from semcon.member.models import ChatFormat, autocast, causal_lm
from semcon.member.train import TokenizedExample, collate, nll_sums, response_nll, tokenize

MIN_NUMERIC_TOKENS = 256  # worked solutions: the default generation cap of a domain with numeric rows
MAX_EVAL_TOKENS = 1024  # the default generation cap never exceeds this


@cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@lru_cache(maxsize=1 << 16)
def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (``rouge-score``, stemmed); remembered, since replay scores the same answers per rule."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def gsm8k_exact_match(prediction: str, reference: str) -> bool:
    """Whether the final numbers of answer and reference are equal as numbers (``18.00`` matches ``18``)."""
    gold = final_number(reference)
    return gold is not None and final_number(prediction) == gold


def answer_letter(response: str) -> str:
    """The correct option letter of a multiple choice reference response such as ``"B. Paris"``."""
    return response.strip()[:1]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit-normalised embedding rows."""
    return (a * b).sum(-1)


def generation_cap(reference_tokens: list[int], numeric: bool) -> int:
    """Default max new tokens of a domain: room for 95% of its references (95th percentile x 1.25), at least
    ``MIN_NUMERIC_TOKENS`` when it has numeric rows, at most ``MAX_EVAL_TOKENS``."""
    need = math.ceil(float(np.percentile(reference_tokens, 95)) * 1.25) if reference_tokens else 1
    return min(max(need, MIN_NUMERIC_TOKENS if numeric else 1), MAX_EVAL_TOKENS)


def lm_eval_prompt(e: Example) -> str:
    """lm-evaluation-harness's zero-shot MMLU prompt of a multiple choice row (no chat template)."""
    subject = (e.domain if e.category == DEFAULT_CATEGORY else e.category).replace("_", " ")
    options = "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, e.choices))
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"{e.question.strip()}{options}\nAnswer:")


def choice_ids(fmt: ChatFormat, e: Example, prompt: str) -> tuple[list[int], list[list[int]]]:
    """Context ids and one continuation per option. ``chat``: the instruction in the chat template, the bare
    letters; ``lm_eval``: ``lm_eval_prompt`` with the tokenizer's own special tokens, continuations ``" A"``...
    split off the encoded whole text, as lm-eval 0.4 encodes a (context, continuation) pair."""
    letters = LETTERS[:len(e.choices)]
    if prompt == "chat":
        return fmt.prompt_ids(e.instruction), [fmt.tok(x, add_special_tokens=False)["input_ids"] for x in letters]
    text = lm_eval_prompt(e)
    context = fmt.tok(text)["input_ids"]
    return context, [fmt.tok(f"{text} {x}")["input_ids"][len(context):] for x in letters]


@torch.inference_mode()
def continuation_logprobs(model, fmt: ChatFormat, context: list[int], continuations: list[list[int]], device,
                          dtype) -> list[float]:
    """Summed log-probability of each continuation after ``context`` (lm-evaluation-harness's loglikelihood)."""
    rows = [TokenizedExample(context + c, [-100] * len(context) + c) for c in continuations]
    batch = collate(rows, fmt.tok.pad_token_id, device)
    with autocast(device, dtype):
        nll, where = response_nll(model, batch)
    sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, where.cpu(), nll.double().cpu())
    return (-sums).tolist()


@torch.inference_mode()
def last_logits(model, fmt: ChatFormat, contexts: list[list[int]], device, dtype) -> torch.Tensor:
    """Next-token logits after each context, the contexts left-padded into one batch."""
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), fmt.tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, c in enumerate(contexts):
        ids[row, width - len(c):], mask[row, width - len(c):] = torch.tensor(c), 1
    lm = causal_lm(model)
    ids, mask = ids.to(device), mask.to(device)
    with autocast(device, dtype):
        hidden = lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                                  use_cache=False).last_hidden_state[:, -1]
        return lm.get_output_embeddings()(hidden).float()


def choice_accuracy(model, fmt: ChatFormat, rows: list[Example], prompt: str, device, dtype,
                    batch_size: int = 8) -> float:
    """Share of multiple choice rows whose correct option has the highest summed log-likelihood (lm-eval's
    ``acc``). Options of one token each (the letters, in most tokenizers) are read from one forward pass of
    the context, batched over rows: the same argmax at a quarter of the cost."""
    hits, single = [], []
    for e in rows:
        context, options = choice_ids(fmt, e, prompt)
        gold = LETTERS.index(answer_letter(e.response))
        if all(len(o) == 1 for o in options):
            single.append((context, [o[0] for o in options], gold))
        else:
            hits.append(int(np.argmax(continuation_logprobs(model, fmt, context, options, device, dtype))) == gold)
    for start in range(0, len(single), batch_size):
        group = single[start:start + batch_size]
        logits = last_logits(model, fmt, [c for c, _, _ in group], device, dtype)
        hits += [int(torch.argmax(row[ids])) == gold for row, (_, ids, gold) in zip(logits, group)]
    return float(np.mean(hits))


def reference_scores(model, fmt: ChatFormat, rows: list[Example], *, batch_size: int, device,
                     dtype, mmlu_prompt: str | None = None) -> dict[str, float]:
    """Teacher-forced quality of the reference responses: ``nll`` per token and ``bpb``, bits per UTF-8 byte
    (summed NLL over the response text, end-of-turn marker excluded, so tokenizers compare). The whole prompt
    is always kept, as in training and generation; nothing is truncated. With ``mmlu_prompt``, also the
    ``accuracy`` of the multiple choice rows: with the ``chat`` prompt the reference's prompt is the choice's
    context, so single-token options are scored from this same forward; otherwise by ``choice_accuracy``."""
    toks, _ = tokenize(fmt, [(e.instruction, e.response, 1.0) for e in rows], None, end=False)
    choices = [e for e in rows if e.task == "multiple_choice"] if mmlu_prompt else []
    options = [_shared_forward_options(fmt, e, t) for e, t in zip(rows, toks)] \
        if choices and mmlu_prompt == "chat" and len(toks) == len(rows) else None
    sums, counts, scores = nll_sums(model, fmt, toks, batch_size=batch_size, device=device, dtype=dtype,
                                    options=options)
    text_bytes = sum(len(e.response.strip().encode("utf-8")) for e in rows)
    m = {"nll": sum(sums) / max(sum(counts), 1), "bpb": sum(sums) / math.log(2) / max(text_bytes, 1)}
    m["bpb_plain"] = m["bpb"]
    if any(plain := [without_annotations(e.response) != e.response for e in rows]):
        m["bpb_plain"] = plain_bpb(model, fmt, rows, plain, sums, batch_size=batch_size, device=device, dtype=dtype)
    if choices:
        picked = [(e, s) for e, s in zip(rows, scores) if e.task == "multiple_choice"]
        if options and all(s is not None for _, s in picked):
            m["accuracy"] = float(np.mean([int(np.argmax(s)) == LETTERS.index(answer_letter(e.response))
                                           for e, s in picked]))
        else:
            m["accuracy"] = choice_accuracy(model, fmt, choices, mmlu_prompt, device, dtype, batch_size)
    return m


def plain_bpb(model, fmt: ChatFormat, rows: list[Example], changed: list[bool], sums: list[float], *, batch_size: int,
              device, dtype) -> float:
    """Bits per byte of the references with GSM8K's calculator annotations removed (``bpb_plain``): a format no
    model-written answer has should not count as knowledge. Only the rows that change are scored again."""
    again = [e for e, c in zip(rows, changed) if c]
    toks, _ = tokenize(fmt, [(e.instruction, without_annotations(e.response), 1.0) for e in again], None, end=False)
    new, _, _ = nll_sums(model, fmt, toks, batch_size=batch_size, device=device, dtype=dtype)
    kept = sum(s for s, c in zip(sums, changed) if not c)
    text_bytes = sum(len(without_annotations(e.response).strip().encode("utf-8")) for e in rows)
    return (kept + sum(new)) / math.log(2) / max(text_bytes, 1)


def _shared_forward_options(fmt: ChatFormat, e: Example, tokenized: TokenizedExample) -> list[int] | None:
    """The option letters' token ids of a multiple choice row whose reference example starts with the
    choice's chat context and whose options are one token each (else None)."""
    if e.task != "multiple_choice":
        return None
    context, options = choice_ids(fmt, e, "chat")
    if any(len(o) != 1 for o in options) or tokenized.ids[:len(context)] != context:
        return None
    return [o[0] for o in options]


def generation_requests(fmt: ChatFormat, eval_sets: dict[str, list[Example]], cfg: EvalConfig
                        ) -> dict[str, tuple[list[Example], int]]:
    """The rows of each domain that are answered for the generation metrics (the first ``cfg.generate_items``),
    and their max new tokens (``cfg.max_new_tokens``, else ``generation_cap`` of the references in this tokenizer).
    Multiple choice rows are not answered: their metric is accuracy by option log-likelihood, and the ROUGE-L of a
    letter and an option would measure the format."""
    if not (cfg.generate and cfg.generate_items):
        return {}
    out = {}
    for domain, rows in eval_sets.items():
        if rows := [e for e in rows if e.task != "multiple_choice"][:cfg.generate_items]:
            lengths = [len(fmt.tok(e.response, add_special_tokens=False)["input_ids"]) for e in rows]
            out[domain] = rows, cfg.max_new_tokens or generation_cap(lengths, any(e.task == "numeric" for e in rows))
    return out


def request_rows(requests: dict[str, tuple[list[Example], int]]) -> tuple[list[str], list[int]]:
    """Every domain's generation rows as one queue: their instructions and each row's max new tokens."""
    texts = [e.instruction for rows, _ in requests.values() for e in rows]
    return texts, [cap for rows, cap in requests.values() for _ in rows]


def split_answers(requests: dict[str, tuple[list[Example], int]], texts: list[str]) -> dict[str, list[str]]:
    """The answers of ``request_rows``' queue back per domain."""
    out, at = {}, 0
    for domain, (rows, _) in requests.items():
        out[domain], at = texts[at:at + len(rows)], at + len(rows)
    return out


def generation_scores(rows: list[Example], answers: list[str], embed) -> dict[str, float]:
    """ROUGE-L, cosine (with ``embed``) and exact match over the numeric rows, of the greedy ``answers`` to ``rows``."""
    refs = [e.response for e in rows]
    m = {"rouge_l": float(np.mean([rouge_l(a, r) for a, r in zip(answers, refs)]))}
    if embed is not None:
        m["cosine"] = float(np.mean(cosine(embed(answers), embed(refs))))
    if hits := [gsm8k_exact_match(a, e.response) for a, e in zip(answers, rows) if e.task == "numeric"]:
        m["exact_match"] = float(np.mean(hits))
    return m


def evaluate_client(model, fmt: ChatFormat, eval_sets: dict[str, list[Example]], cfg: EvalConfig, *, embed,
                    gen_batch_size: int, device, dtype, answers: dict[str, list[str]] | None = None
                    ) -> dict[str, dict[str, float]]:
    """Every metric that applies to each domain: ``{domain: {metric: value}}``. Reference NLL, bits per byte and
    accuracy use every row; the generation metrics the rows of ``generation_requests``, answered here unless
    their ``answers`` are given (several clients' answers generated in shared batches)."""
    if answers is None:
        requests = generation_requests(fmt, eval_sets, cfg)
        texts, caps = request_rows(requests)
        outs = generate(model, fmt, texts, max_new_tokens=caps, batch_size=gen_batch_size, device=device, dtype=dtype)
        answers = split_answers(requests, [g.text for g in outs])
    out: dict[str, dict[str, float]] = {}
    for domain, rows in eval_sets.items():
        if not rows:
            continue
        m = reference_scores(model, fmt, rows, batch_size=cfg.batch_size, device=device, dtype=dtype,
                             mmlu_prompt=cfg.mmlu_prompt)
        if domain in answers:
            m |= generation_scores(rows[:len(answers[domain])], answers[domain], embed)
        out[domain] = {k: round(v, 5) for k, v in m.items()}
    return out
