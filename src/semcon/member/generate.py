"""Greedy generation in one continuous batch: every row to answer goes into one queue, and the active batch is
kept full by admitting the next rows as others finish.

Each row holds one *slot* of a KV cache allocated once for the active batch (``SlotCache``): a finished row frees
its slot without moving any other row's keys, and the next row's prompt is prefilled into it. Attention reads
the slots in place, grouped-query heads without an expanded copy of the key/value heads (``slot_attention``).
Rows may each name their own LoRA adapter (clients sharing a base model answer in one batch), each row through
its own adapter in every LoRA layer (``per_row_adapters``).

``greedy_batch`` is the previous engine (static batches that shrink as rows end, ``engine="static"``), kept for
the benchmark and the tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer

from semcon.member.models import ChatFormat, autocast, causal_lm


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


STACKED_RANKS = 128  # up to this many adapter ranks in all, rows go through every adapter (masked) in one matmul


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
    a_all = a.reshape(len(names) * rank, layer.in_features)  # every adapter's A, one block of rank rows each
    b_all = b.transpose(1, 2).reshape(len(names) * rank, layer.out_features)
    onehot = torch.eye(len(names), dtype=weight.dtype, device=weight.device)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = layer.base_layer(x, *args, **kwargs)
        idx = rows.index
        x = x.reshape(len(idx), -1, x.shape[-1])
        if 1 < len(idx) and len(names) * rank <= STACKED_RANKS:
            # two plain matmuls through every adapter, each row's other adapters' blocks zeroed in between: no
            # per-row copy of the adapters' weights
            h = (x @ a_all.T).view(len(idx), x.shape[1], len(names), rank) * onehot[idx][:, None, :, None]
            return out + (h.view(len(idx), x.shape[1], -1) @ b_all).reshape(out.shape).to(out.dtype)
        h = torch.bmm(x, a[idx].transpose(1, 2))  # one row (a packed prefill), or many adapters: each row's own
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


PREFILL_TOKENS = 2048  # prompt tokens per prefill pass (packed, one adapter per pass)


@dataclass
class _Step:
    """What one forward pass of the continuous batch computes. Decode: one token for every slot up to the highest
    in use (slot i is row i), at ``positions`` ([slots, 1]). Prefill: the prompts of some rows packed into one
    sequence without padding (``positions`` [1, tokens], restarting at 0 for each row), each token going to its
    row's slot (``slots``, per token), the rows' ``segments`` (start, length) in the sequence."""

    positions: torch.Tensor
    slots: torch.Tensor | None = None
    segments: list[tuple[int, int]] | None = None


class SlotCache:
    """Keys and values of the active batch: per layer ``[slots, kv_heads, capacity, head_dim]``, allocated at the
    first forward. A row keeps its slot from admission to its last token; its prefill writes its prompt's keys,
    each decode step one position. Only ``update`` is asked of it by the model (its ``past_key_values``)."""

    def __init__(self, slots: int, capacity: int):
        self.slots, self.capacity = slots, capacity
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.step: _Step | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        step = self.step
        if layer_idx not in self.keys:
            shape = (self.slots, key_states.shape[1], self.capacity, key_states.shape[-1])
            self.keys[layer_idx] = key_states.new_zeros(shape)
            self.values[layer_idx] = value_states.new_zeros(shape[:3] + value_states.shape[-1:])
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if step.segments is not None:  # a prefill: each token to its row's slot; it attends to its own prompt only
            keys[step.slots, :, step.positions[0]] = key_states[0].transpose(0, 1)  # [tokens, kv_heads, dim]
            values[step.slots, :, step.positions[0]] = value_states[0].transpose(0, 1)
            return key_states, value_states
        rows = torch.arange(len(step.positions), device=keys.device)
        keys[rows, :, step.positions[:, 0]] = key_states[:, :, 0]
        values[rows, :, step.positions[:, 0]] = value_states[:, :, 0]
        span = int(step.positions.max()) + 1
        return keys[:len(rows), :, :span], values[:len(rows), :, :span]  # views: no copy

    def move(self, source: list[int], target: list[int]) -> None:
        """Copy the slots ``source`` to ``target`` (compaction once the queue is empty)."""
        src, dst = torch.tensor(source), torch.tensor(target)
        for table in (self.keys, self.values):
            for buffer in table.values():
                buffer[dst.to(buffer.device)] = buffer[src.to(buffer.device)]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scaling: float,
            softcap: float | None) -> torch.Tensor:
    """Attention of ``q`` [rows, heads, tokens, dim] over ``k``, ``v`` [rows, kv_heads, span, dim] where
    ``allowed`` [rows, tokens, span]: each group of query heads reads its key/value head in place."""
    rows, heads, tokens, dim = q.shape
    kv_heads, span = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scores = torch.matmul(q.reshape(rows, kv_heads, group * tokens, dim), k.transpose(-1, -2))
    scores = scores.view(rows, kv_heads, group, tokens, span) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs.view(rows, kv_heads, group * tokens, span), v).view(rows, heads, tokens, dim)


def slot_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                   softcap: float | None = None, semcon_step: _Step | None = None, **kwargs):
    """Attention over the slot cache (decode) or within each packed prompt (prefill): each row sees its own
    positions only, up to its own (within ``module.sliding_window`` where set); no causal mask is built for it."""
    window = getattr(module, "sliding_window", None)
    if semcon_step.segments is None:
        at = torch.arange(key.shape[2], device=query.device)
        now = semcon_step.positions[:, :, None]  # [rows, 1, 1]
        allowed = at <= now if window is None else (at <= now) & (at > now - window)
        out = _attend(query, key, value, allowed, scaling, softcap)
    else:
        out = torch.empty_like(query)
        for start, n in semcon_step.segments:
            at = torch.arange(n, device=query.device)
            allowed = at[None, :] <= at[:, None]
            if window is not None:
                allowed = allowed & (at[None, :] > at[:, None] - window)
            part = slice(start, start + n)
            out[:, :, part] = _attend(query[:, :, part], key[:, :, part], value[:, :, part], allowed[None], scaling,
                                      softcap)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("semcon_slots", slot_attention)


@contextmanager
def slot_attention_for(model: torch.nn.Module):
    """The model's attention reads the slot cache while inside (no causal mask is built: ``slot_attention`` masks
    each row itself)."""
    config = causal_lm(model).config
    before = config._attn_implementation
    config._attn_implementation = "semcon_slots"
    try:
        yield
    finally:
        config._attn_implementation = before


def _forward(model: torch.nn.Module, cache: SlotCache, step: _Step, ids: torch.Tensor, last: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of ``ids`` at ``step``; the greedy next token read at each of the ``last`` positions of
    the flattened tokens (one per row), and its log-probability."""
    lm = causal_lm(model)
    cache.step = step
    hidden = lm.get_decoder()(input_ids=ids, position_ids=step.positions, past_key_values=cache, use_cache=True,
                              semcon_step=step).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[last].contiguous()
    logits = lm.get_output_embeddings()(hidden).float()
    if softcap := getattr(lm.config, "final_logit_softcapping", None):
        logits = torch.tanh(logits / softcap) * softcap
    best, next_ids = logits.max(-1)
    return next_ids, best - torch.logsumexp(logits, -1)


def _packs(taken: list[tuple[int, int]], prompts: list[list[int]], adapters: list[str] | None
           ) -> list[list[tuple[int, int]]]:
    """The admitted (slot, row) pairs in prefill passes: rows of one adapter together (in queue order), at most
    ``PREFILL_TOKENS`` prompt tokens a pass (a longer prompt alone)."""
    order = sorted(taken, key=lambda slot_row: adapters[slot_row[1]] if adapters else "")
    packs: list[list[tuple[int, int]]] = []
    for s, row in order:
        same = packs and (adapters is None or adapters[packs[-1][0][1]] == adapters[row])
        if same and sum(len(prompts[r]) for _, r in packs[-1]) + len(prompts[row]) <= PREFILL_TOKENS:
            packs[-1].append((s, row))
        else:
            packs.append([(s, row)])
    return packs


@torch.inference_mode()
def continuous_batch(model: torch.nn.Module, prompts: list[list[int]], *, max_new_tokens: int | list[int],
                     eos_ids: set[int], pad_id: int, device: torch.device, dtype: torch.dtype, batch_size: int,
                     adapters: list[str] | None = None, until: Callable[[list[int]], bool] | None = None,
                     on_row=None
                     ) -> tuple[list[list[int]], list[float]]:
    """Greedy continuation of each prompt (token ids, taken in order from one queue), at most ``batch_size`` rows
    at a time, stopping a row at EOS, when ``until(its tokens so far)`` holds (its last token kept), or at its cap
    (``max_new_tokens``, one or per row); and the summed log-probability of each row's tokens (its end-of-turn
    token included). ``adapters``: the LoRA adapter of each prompt. ``on_row()``: after each row ends."""
    caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    outputs: list[list[int]] = [[] for _ in prompts]
    logprob = [0.0] * len(prompts)
    if not prompts:
        return outputs, logprob
    slots = min(batch_size, len(prompts))
    cache = SlotCache(slots, max(len(p) for p in prompts) + max(caps))
    row_of = [-1] * slots  # the row each slot holds (-1: free)
    used = [0] * len(prompts)  # tokens each row has consumed (its end-of-turn token included)
    pending = [0] * slots  # each slot's next token, and its log-probability, not yet consumed
    pending_lp = [0.0] * slots
    position = [0] * slots  # where each slot's next token goes
    queue = list(range(len(prompts)))
    queue.reverse()  # popped from the end: the caller's order
    eos = set(eos_ids)
    rows = RowAdapters(adapters, device)

    def consume(taking: list[int]) -> None:
        """Take each slot's pending token: the row ends (its slot freed) at EOS, the stop rule or its cap."""
        for s in taking:
            row = row_of[s]
            tok = pending[s]
            logprob[row] += pending_lp[s]
            used[row] += 1
            stop = tok in eos
            if not stop:
                outputs[row].append(tok)
                stop = bool(until and until(outputs[row]))
            if stop or used[row] >= caps[row]:
                row_of[s] = -1
                if on_row:
                    on_row()

    def admit() -> None:
        """Fill free slots from the queue (lowest first), prefilling their prompts packed, one adapter a pass."""
        while queue and (free := [s for s, row in enumerate(row_of) if row < 0]):
            taken = [(s, queue.pop()) for s in free[:len(queue)]]
            for s, row in taken:
                row_of[s] = row
            for pack in _packs(taken, prompts, adapters):
                lengths = [len(prompts[row]) for _, row in pack]
                ids = torch.tensor([[t for _, row in pack for t in prompts[row]]], device=device)
                starts = [0, *itertools.accumulate(lengths)][:-1]
                rows.select([pack[0][1]])
                step = _Step(positions=torch.cat([torch.arange(n) for n in lengths])[None].to(device),
                             slots=torch.tensor([s for s, row in pack for _ in prompts[row]], device=device),
                             segments=list(zip(starts, lengths)))
                last = torch.tensor([a + n - 1 for a, n in zip(starts, lengths)], device=device)
                next_ids, lps = _forward(model, cache, step, ids, last)
                for (s, row), tok, lp, n in zip(pack, next_ids.tolist(), lps.double().tolist(), lengths):
                    pending[s], pending_lp[s], position[s] = int(tok), lp, n
                consume([s for s, _ in pack])

    def compact() -> None:
        """Once the queue is empty and an eighth of the slots up to the highest in use hold no row, move the rows to
        the lowest slots (one copy of their caches) so that decode steps compute live rows only."""
        live = [s for s, row in enumerate(row_of) if row >= 0]
        if queue or not live or (live[-1] + 1 - len(live)) * 8 < live[-1] + 1:
            return
        target = list(range(len(live)))
        cache.move(live, target)
        for t, s in zip(target, live):
            row_of[t], pending[t], position[t] = row_of[s], pending[s], position[s]
        for s in range(len(live), slots):
            row_of[s] = -1

    with autocast(device, dtype), per_row_adapters(model, rows), slot_attention_for(model):
        while True:
            admit()
            compact()
            live = [s for s, row in enumerate(row_of) if row >= 0]
            if not live:
                break
            high = live[-1] + 1
            rows.select([max(row_of[s], 0) for s in range(high)])
            ids = torch.tensor([[pending[s] if row_of[s] >= 0 else pad_id] for s in range(high)], device=device)
            positions = torch.tensor([[position[s] if row_of[s] >= 0 else 0] for s in range(high)], device=device)
            next_ids, lps = _forward(model, cache, _Step(positions=positions), ids, torch.arange(high, device=device))
            # one device-to-host copy per step (ids and float32 log-probabilities are exact in float64)
            toks, lps = torch.stack([next_ids.double(), lps.double()]).tolist()
            for s in live:
                pending[s], pending_lp[s], position[s] = int(toks[s]), lps[s], position[s] + 1
            consume(live)
    return outputs, logprob


def _before_stop(tok, ids: list[int], cut: int) -> list[int]:
    """The longest prefix of ``ids`` whose text ends by character ``cut`` of their whole text."""
    k = len(ids)
    while k and len(tok.decode(ids[:k], skip_special_tokens=True)) > cut:
        k -= 1
    return ids[:k]


def generate(model: torch.nn.Module, fmt: ChatFormat, instructions: list[str], *, max_new_tokens: int | list[int],
             batch_size: int, device: torch.device, dtype: torch.dtype, on_batch=None,
             adapters: list[str] | None = None, engine: str = "continuous") -> list[Generation]:
    """Greedy answers to ``instructions`` (in their order), each with the model's own chat template, all in one
    continuous batch of ``batch_size`` rows (longest prompts first); ``max_new_tokens``: one cap or one per
    instruction; ``adapters``: the LoRA adapter that answers each instruction (default: the active one);
    ``on_batch(n)``: progress, n rows done. ``engine="static"``: the previous engine (benchmark and tests)."""
    prompts = [fmt.prompt_ids(text) for text in instructions]
    caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    eos_ids = fmt.eos_ids()
    # the stop text is a few tokens long: the last 8 hold it the moment it is complete
    until = (lambda ids: fmt.stop in fmt.tok.decode(ids[-8:], skip_special_tokens=True)) if fmt.stop else None
    common = dict(eos_ids=eos_ids, pad_id=fmt.tok.pad_token_id, device=device, dtype=dtype, until=until)
    outs: list[list[int]] = [[] for _ in prompts]
    logprobs = [0.0] * len(prompts)
    if engine == "continuous":
        got, lps = continuous_batch(model, [prompts[i] for i in order], max_new_tokens=[caps[i] for i in order],
                                    batch_size=batch_size, adapters=None if adapters is None else
                                    [adapters[i] for i in order], on_row=on_batch and (lambda: on_batch(1)), **common)
        for i, toks, lp in zip(order, got, lps):
            outs[i], logprobs[i] = toks, lp
    else:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            if len({caps[i] for i in rows}) > 1:
                raise ValueError("the static engine takes one max_new_tokens per batch")
            got, lps = greedy_batch(model, [prompts[i] for i in rows], max_new_tokens=caps[rows[0]],
                                    adapters=None if adapters is None else [adapters[i] for i in rows], **common)
            for i, toks, lp in zip(rows, got, lps):
                outs[i], logprobs[i] = toks, lp
            if on_batch:
                on_batch(len(rows))
    return [_generation(fmt, toks, lp, cap) for toks, lp, cap in zip(outs, logprobs, caps)]


def _generation(fmt: ChatFormat, toks: list[int], lp: float, cap: int) -> Generation:
    """A row's tokens as an answer: its text up to the stop text, whether it ended by itself, its confidence."""
    text = fmt.tok.decode(toks, skip_special_tokens=True)
    cut = text.find(fmt.stop) if fmt.stop else -1
    eos = len(toks) < cap and cut < 0  # lp includes the end-of-turn token's
    confidence = min(lp / max(len(toks) + eos, 1), 0.0)
    if cut >= 0:
        toks, text = _before_stop(fmt.tok, toks, cut), text[:cut]
    return Generation(text.strip(), toks, eos or cut >= 0, confidence)
