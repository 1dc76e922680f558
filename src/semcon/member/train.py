"""LoRA supervised fine-tuning with the loss on response tokens only, built for small CPUs.

The levers, in order of effect: the vocabulary projection runs only at response positions and in
checkpointed chunks (the full ``[tokens, vocab]`` fp32 logits never exist), batches are grouped by
length so padding costs little, and matmuls run in the base weights' dtype (bf16 where native).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from semcon.member.models import ChatFormat, autocast, causal_lm, trainable_parameters

IGNORE = -100
LOSS_CHUNK = 1024  # response positions per vocabulary-projection chunk


@dataclass(frozen=True)
class TokenizedExample:
    ids: list[int]
    labels: list[int]
    weight: float = 1.0


@dataclass
class TrainStats:
    steps: int
    tokens: int
    losses: list[float]  # one per step
    seconds: float
    dropped_too_long: int = 0  # examples left out for being longer than train.max_length


def tokenize(fmt: ChatFormat, pairs: list[tuple[str, str, float]], max_length: int | None, *,
             truncate: str = "drop", end: bool = True) -> tuple[list[TokenizedExample], int]:
    """(instruction, response, weight) triples to token ids with prompt-masked labels, and how many were
    dropped for being longer than ``max_length`` (see ``ChatFormat.example_ids``; None: no limit)."""
    out, dropped = [], 0
    for instruction, response, weight in pairs:
        tokenized = fmt.example_ids(instruction, response, max_length, end=end, truncate=truncate)
        if tokenized is None:
            dropped += 1
        elif any(lab != IGNORE for lab in tokenized[1][1:]):
            out.append(TokenizedExample(*tokenized, weight))
    return out, dropped


def length_grouped_batches(examples: list[TokenizedExample], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), batches in random order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].ids), rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def micro_batches(rows: list[TokenizedExample], max_tokens: int) -> list[list[TokenizedExample]]:
    """Split a batch so that each piece pads to at most ``max_tokens`` (at least one row per piece)."""
    rows = sorted(rows, key=lambda e: len(e.ids))
    out, current = [], []
    for e in rows:
        if current and (len(current) + 1) * len(e.ids) > max_tokens:
            out.append(current)
            current = []
        current.append(e)
    return out + [current] if current else out


def collate(examples: list[TokenizedExample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding) and per-row weights."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        labels[row, :len(e.labels)] = torch.tensor(e.labels)
        mask[row, :len(e.ids)] = 1
    weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    return {k: v.to(device) for k, v in
            dict(input_ids=ids, attention_mask=mask, labels=labels, weights=weights).items()}


def _chunk_nll(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None):
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="none")


def decoder_states(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last hidden state at every position of the batch (before the vocabulary projection)."""
    return causal_lm(model).get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          use_cache=False).last_hidden_state


def response_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor], hidden: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood at response positions, and the row index of each token.

    Runs the decoder once (unless its ``hidden`` states are given), then projects to the vocabulary only
    where a label exists, in chunks that are recomputed in backward instead of stored.
    """
    lm = causal_lm(model)
    hidden = decoder_states(model, batch) if hidden is None else hidden
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE
    h, y = hidden[:, :-1][where], targets[where]
    rows = where.nonzero()[:, 0]
    head = lm.get_output_embeddings()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    parts = []
    for start in range(0, len(y), LOSS_CHUNK):
        hc, yc = h[start:start + LOSS_CHUNK], y[start:start + LOSS_CHUNK]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_nll, hc, yc, head, softcap, use_reentrant=False))
        else:
            parts.append(_chunk_nll(hc, yc, head, softcap))
    nll = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    return nll, rows


def train_lora(model: torch.nn.Module, fmt: ChatFormat, examples: list[TokenizedExample], *, steps: int,
               batch_size: int, lr: float, seed: int | str, device: torch.device, dtype: torch.dtype,
               micro_batch_tokens: int = 1024, prox_mu: float = 0.0, on_step=None) -> TrainStats:
    """``steps`` AdamW steps on the active adapter over length-grouped batches of ``examples``.

    ``prox_mu`` > 0 adds FedProx's (μ/2)||w - w_start||², w_start being the weights this call starts from
    (the global adapter just received).
    """
    import time

    start = time.perf_counter()
    rng = random.Random(seed)
    params = trainable_parameters(model)
    if not params:  # a model without an active adapter would "train" nothing, silently
        raise ValueError("no trainable parameters: activate an adapter first (Backbone.active)")
    if steps == 0 or not examples:
        return TrainStats(0, 0, [], 0.0)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    anchor = [p.detach().clone() for p in params] if prox_mu > 0 else None
    model.train()
    batches: list[list[int]] = []
    losses, tokens = [], 0
    for step in range(steps):
        if not batches:
            batches = length_grouped_batches(examples, batch_size, rng)
        rows = [examples[i] for i in batches.pop()]
        # Σ w·nll / Σ tokens over the whole batch (λ scales the gradient of pseudo-labelled rows), accumulated
        # over micro-batches that bound activation memory.
        denom = sum(sum(lab != IGNORE for lab in e.labels[1:]) for e in rows)
        total = 0.0
        for micro in micro_batches(rows, micro_batch_tokens):
            batch = collate(micro, fmt.tok.pad_token_id, device)
            with autocast(device, dtype):
                nll, where = response_nll(model, batch)
                loss = (nll * batch["weights"][where]).sum() / max(denom, 1)
            loss.backward()
            total += loss.item()
            tokens += int(batch["attention_mask"].sum())
        if anchor is not None:
            prox = 0.5 * prox_mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            prox.backward()
            total += prox.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        if on_step:
            on_step(step, total)
    model.eval()
    return TrainStats(steps, tokens, losses, time.perf_counter() - start)


@torch.inference_mode()
def nll_sums(model: torch.nn.Module, fmt: ChatFormat, examples: list[TokenizedExample], *, batch_size: int,
             device: torch.device, dtype: torch.dtype, options: list[list[int] | None] | None = None
             ) -> tuple[list[float], list[int], list[list[float] | None]]:
    """Teacher-forced summed NLL (nats) of each example's response tokens, and their count, in input order.
    ``options[i]``: token ids whose logits just before example i's first response token are returned too
    (a multiple choice row's option letters, read off the same forward); None elsewhere."""
    sums, counts = [0.0] * len(examples), [0] * len(examples)
    scores: list[list[float] | None] = [None] * len(examples)
    head = causal_lm(model).get_output_embeddings()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = collate([examples[i] for i in rows], fmt.tok.pad_token_id, device)
        with autocast(device, dtype):
            hidden = decoder_states(model, batch)
            nll, where = response_nll(model, batch, hidden)
            if peek := [k for k, i in enumerate(rows) if options and options[i]]:
                # the hidden state at the last prompt position, just before the first label
                at = [next(p for p, lab in enumerate(examples[rows[k]].labels) if lab != IGNORE) - 1 for k in peek]
                logits = head(hidden[torch.tensor(peek, device=device), torch.tensor(at, device=device)]).float()
                for k, row in zip(peek, logits.cpu()):
                    scores[rows[k]] = row[options[rows[k]]].tolist()
        per_row = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, where.cpu(), nll.double().cpu())
        per_count = torch.bincount(where.cpu(), minlength=len(rows))
        for k, i in enumerate(rows):
            sums[i], counts[i] = float(per_row[k]), int(per_count[k])
    return sums, counts, scores
