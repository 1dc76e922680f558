"""Batched greedy generation: prompts sorted by length, left padding, a KV cache that grows in place, finished
rows dropped.

``model.generate`` keeps computing every row of a batch until the longest answer ends; here a row
that emits end-of-turn leaves the batch (its KV cache rows are dropped), so short answers stop
costing compute. Rows may each name their own LoRA adapter (clients sharing a base model answer in
one batch): peft's LoRA layers then add each row's adapter to the shared base output.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from semcon.models import ChatFormat, autocast, causal_lm


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]  # generated ids, up to and excluding the end-of-turn token or stop text
    finished: bool  # ended by end-of-turn (or the format's stop text) rather than the max_new_tokens cap
    confidence: float  # mean log-probability of the generated tokens (end-of-turn included), <= 0


def _left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s)
        mask[row, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _next_tokens(model: torch.nn.Module, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy next token per row and its log-probability. The vocabulary projection runs on the last
    position only, as a 2-D matmul (a sliced 3-D input makes ``nn.Linear`` copy the head weight per row)."""
    lm = causal_lm(model)
    hidden = lm.get_decoder()(**inputs, use_cache=True).last_hidden_state[:, -1].contiguous()
    logits = lm.get_output_embeddings()(hidden).float()
    if softcap := getattr(lm.config, "final_logit_softcapping", None):
        logits = torch.tanh(logits / softcap) * softcap
    best, ids = logits.max(-1)
    return ids, best - torch.logsumexp(logits, -1)


class _GrowingLayer(DynamicLayer):
    """A cache layer that writes each new position into spare room, allocated ``ROOM`` positions at a time, instead
    of concatenating the whole cache at every step (``DynamicLayer``): one copy of the new keys per token rather
    than one of every cached key."""

    ROOM = 128

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self._n = 0
        n, new = self._n, key_states.shape[-2]
        if self._k is None or n + new > self._k.shape[-2]:
            k = key_states.new_empty(*key_states.shape[:-2], n + new + self.ROOM, key_states.shape[-1])
            v = value_states.new_empty(*value_states.shape[:-2], n + new + self.ROOM, value_states.shape[-1])
            if n:
                k[..., :n, :], v[..., :n, :] = self.keys, self.values
            self._k, self._v = k, v
        self._k[..., n:n + new, :], self._v[..., n:n + new, :] = key_states, value_states
        self._n = n + new
        self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]


def _growing_cache(model: torch.nn.Module) -> DynamicCache:
    """A ``DynamicCache`` whose full-attention layers grow in place (sliding-window layers stay as they are)."""
    cache = DynamicCache(config=causal_lm(model).config)
    cache.layers = [_GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _prefill(model: torch.nn.Module, prompts: list[list[int]], pad_id: int, device: torch.device,
             group: int, rows: RowAdapters) -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
    """Run the prompts in groups of similar length (little padding), then merge the groups' KV caches
    into one left-padded cache. Returns first tokens, attention mask and the cache."""
    width = max(len(p) for p in prompts)
    firsts, logps, layers = [], [], []
    for start in range(0, len(prompts), group):
        rows.select(list(range(start, min(start + group, len(prompts)))))
        ids, mask = _left_pad(prompts[start:start + group], pad_id, device)
        cache = DynamicCache(config=causal_lm(model).config)
        first, logp = _next_tokens(model, input_ids=ids, attention_mask=mask,
                                   position_ids=(mask.cumsum(-1) - 1).clamp_min(0), past_key_values=cache)
        firsts.append(first)
        logps.append(logp)
        pad = width - ids.shape[1]
        layers.append([(F.pad(layer.keys, (0, 0, pad, 0)), F.pad(layer.values, (0, 0, pad, 0)))
                       for layer in cache.layers])
    merged = _growing_cache(model)
    for i in range(len(layers[0])):
        merged.update(torch.cat([g[i][0] for g in layers]), torch.cat([g[i][1] for g in layers]), i)
    _, mask = _left_pad(prompts, pad_id, device)
    rows.select(list(range(len(prompts))))
    return torch.cat(firsts), torch.cat(logps), mask, merged


class RowAdapters:
    """The LoRA adapter of each row of the batch being computed (None: whatever adapter is active)."""

    def __init__(self, names: list[str] | None, device: torch.device | str = "cpu"):
        self.all, self.now, self.device = names, names, device
        self.distinct = list(dict.fromkeys(names or []))
        self.index: torch.Tensor | None = None  # each row's position in ``distinct``, on the model's device

    def select(self, rows: list[int]) -> None:
        # One copy to the device per batch change: a copy in every LoRA layer would stall a GPU at each one.
        if self.all is not None:
            self.now = [self.all[i] for i in rows]
            self.index = torch.tensor([self.distinct.index(n) for n in self.now], device=self.device)


@contextmanager
def per_row_adapters(model: torch.nn.Module, rows: RowAdapters):
    """Give every row its own LoRA adapter while inside. In linear layers the adapters' weights are stacked
    once and each row's are gathered and applied with two batched matmuls (peft's mixed-adapter batches loop
    over the adapters in every layer); other LoRA layers get peft's ``adapter_names`` keyword."""
    if rows.all is None:
        yield
        return
    from peft.tuners.lora import Linear, LoraLayer

    rows.select(list(range(len(rows.all))))
    patched, hooks = [], []

    def inject(_module, args, kwargs):
        return args, {**kwargs, "adapter_names": rows.now}

    for m in model.modules():
        if isinstance(m, Linear) and not m.merged:
            m.forward = _stacked_lora(m, rows)
            patched.append(m)
        elif isinstance(m, LoraLayer):
            hooks.append(m.register_forward_pre_hook(inject, with_kwargs=True))
    try:
        yield
    finally:
        for m in patched:
            del m.forward
        for hook in hooks:
            hook.remove()


def _stacked_lora(layer, rows: RowAdapters):
    """A forward for one peft LoRA ``Linear``: the base output plus each row's adapter, the adapters' A and B
    stacked (zero-padded to the largest rank; zero where an adapter does not have this layer)."""
    names = rows.distinct
    present = [n for n in names if n in layer.lora_A]
    if not present:
        return layer.base_layer
    rank = max(layer.r[n] for n in present)
    weight = layer.lora_A[present[0]].weight
    a = weight.new_zeros(len(names), rank, layer.in_features)
    b = weight.new_zeros(len(names), layer.out_features, rank)
    scale = weight.new_zeros(len(names))
    for i, n in enumerate(names):
        if n in present:
            a[i, :layer.r[n]] = layer.lora_A[n].weight
            b[i, :, :layer.r[n]] = layer.lora_B[n].weight
            scale[i] = layer.scaling[n]
    b = b * scale[:, None, None]

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = layer.base_layer(x, *args, **kwargs)
        idx = rows.index
        h = torch.bmm(x.reshape(len(idx), -1, x.shape[-1]), a[idx].transpose(1, 2))
        return out + torch.bmm(h, b[idx].transpose(1, 2)).reshape(out.shape).to(out.dtype)

    return forward


@torch.inference_mode()
def greedy_batch(model: torch.nn.Module, prompts: list[list[int]], *, max_new_tokens: int, eos_ids: set[int],
                 pad_id: int, device: torch.device, dtype: torch.dtype, prefill_group: int = 16,
                 adapters: list[str] | None = None, until: Callable[[list[int]], bool] | None = None
                 ) -> tuple[list[list[int]], list[float]]:
    """Greedy continuation of each prompt (token ids, longest first), stopping rows at EOS, when ``until(the
    row's tokens so far)`` holds (its last token kept), or at the cap, and the summed log-probability of each
    row's tokens (its end-of-turn token included). ``adapters``: the LoRA adapter of each prompt."""
    alive = list(range(len(prompts)))  # original row of each row still in the batch
    outputs: list[list[int]] = [[] for _ in prompts]
    logprob = [0.0] * len(prompts)
    eos = torch.tensor(sorted(eos_ids), device=device)
    rows = RowAdapters(adapters, device)
    with autocast(device, dtype), per_row_adapters(model, rows):
        next_ids, logps, mask, cache = _prefill(model, prompts, pad_id, device, prefill_group, rows)
        positions = mask.sum(-1, keepdim=True) - 1
        for step in range(max_new_tokens):
            # one device-to-host copy per step (ids and float32 log-probabilities are exact in float64)
            ids, done, lps = torch.stack([next_ids.double(), torch.isin(next_ids, eos).double(),
                                          logps.double()]).tolist()
            for k, (row, tok, stop, lp) in enumerate(zip(alive, ids, done, lps)):
                logprob[row] += lp
                if not stop:
                    outputs[row].append(int(tok))
                    done[k] = bool(until and until(outputs[row]))
            if step == max_new_tokens - 1:
                break
            if any(done):
                keep = [k for k, stop in enumerate(done) if not stop]
                if not keep:
                    break
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                alive = [alive[k] for k in keep]
                next_ids, mask, positions = next_ids[index], mask[index], positions[index]
                rows.select(alive)
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            positions = positions + 1
            next_ids, logps = _next_tokens(model, input_ids=next_ids[:, None], attention_mask=mask,
                                           position_ids=positions, past_key_values=cache)
    return outputs, logprob


def _before_stop(tok, ids: list[int], cut: int) -> list[int]:
    """The longest prefix of ``ids`` whose text ends by character ``cut`` of their whole text."""
    k = len(ids)
    while k and len(tok.decode(ids[:k], skip_special_tokens=True)) > cut:
        k -= 1
    return ids[:k]


def generate(model: torch.nn.Module, fmt: ChatFormat, instructions: list[str], *, max_new_tokens: int,
             batch_size: int, device: torch.device, dtype: torch.dtype, on_batch=None,
             adapters: list[str] | None = None) -> list[Generation]:
    """Greedy answers to ``instructions`` (in their order), each with the model's own chat template;
    ``adapters``: the LoRA adapter that answers each instruction (default: the active one)."""
    prompts = [fmt.prompt_ids(text) for text in instructions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    eos_ids = fmt.eos_ids()
    # the stop text is a few tokens long: the last 8 hold it the moment it is complete
    until = (lambda ids: fmt.stop in fmt.tok.decode(ids[-8:], skip_special_tokens=True)) if fmt.stop else None
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        outs, logprobs = greedy_batch(model, [prompts[i] for i in rows], max_new_tokens=max_new_tokens,
                                      eos_ids=eos_ids, pad_id=fmt.tok.pad_token_id, device=device, dtype=dtype,
                                      adapters=None if adapters is None else [adapters[i] for i in rows], until=until)
        for i, toks, lp in zip(rows, outs, logprobs):
            text = fmt.tok.decode(toks, skip_special_tokens=True)
            cut = text.find(fmt.stop) if fmt.stop else -1
            eos = len(toks) < max_new_tokens and cut < 0  # lp includes the end-of-turn token's
            confidence = min(lp / max(len(toks) + eos, 1), 0.0)
            if cut >= 0:
                toks, text = _before_stop(fmt.tok, toks, cut), text[:cut]
            results[i] = Generation(text.strip(), toks, eos or cut >= 0, confidence)
        if on_batch:
            on_batch(len(rows))
    return results
