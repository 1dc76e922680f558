"""Batched greedy generation: prompts sorted by length, left padding, KV cache, finished rows dropped.

``model.generate`` keeps computing every row of a batch until the longest answer ends; here a row
that emits end-of-turn leaves the batch (its KV cache rows are dropped), so short answers stop
costing compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from semcon.models import ChatFormat


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]  # generated ids, up to and excluding the end-of-turn token
    finished: bool  # ended by end-of-turn rather than the max_new_tokens cap


def _left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s)
        mask[row, width - len(s):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def greedy_batch(model: torch.nn.Module, prompts: list[list[int]], *, max_new_tokens: int, eos_ids: set[int],
                 pad_id: int, device: torch.device, dtype: torch.dtype) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), stopping rows at an EOS id or the cap."""
    ids, mask = _left_pad(prompts, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache()
    alive = torch.arange(len(prompts), device=device)  # original row of each row still in the batch
    outputs: list[list[int]] = [[] for _ in prompts]
    eos = torch.tensor(sorted(eos_ids), device=device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for step in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1]
            next_ids = logits.argmax(-1)
            done = torch.isin(next_ids, eos)
            for row, tok, stop in zip(alive.tolist(), next_ids.tolist(), done.tolist()):
                if not stop:
                    outputs[row].append(tok)
            if step == max_new_tokens - 1:
                break
            if done.any():
                keep = (~done).nonzero()[:, 0]
                if len(keep) == 0:
                    break
                cache.batch_select_indices(keep)
                alive, next_ids, mask = alive[keep], next_ids[keep], mask[keep]
                positions = positions[keep]
            ids = next_ids[:, None]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            positions = positions[:, -1:] + 1
    return outputs


def generate(model: torch.nn.Module, fmt: ChatFormat, instructions: list[str], *, max_new_tokens: int,
             batch_size: int, device: torch.device, dtype: torch.dtype, on_batch=None) -> list[Generation]:
    """Greedy answers to ``instructions`` (in their order), each with the model's own chat template."""
    prompts = [fmt.prompt_ids(text) for text in instructions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    eos_ids = fmt.eos_ids()
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        outs = greedy_batch(model, [prompts[i] for i in rows], max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                            pad_id=fmt.tok.pad_token_id, device=device, dtype=dtype)
        for i, toks in zip(rows, outs):
            text = fmt.tok.decode(toks, skip_special_tokens=True).strip()
            results[i] = Generation(text, toks, finished=len(toks) < max_new_tokens)
        if on_batch:
            on_batch(len(rows))
    return results
