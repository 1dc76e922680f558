import torch

from semcon.member.generate import generate, greedy_batch
from semcon.member.models import PLAIN_STOP, Backbone

PROMPTS = ["Hi", "What is the tallest mountain on Earth and how tall is it?", "Count to three.",
           "Describe the water cycle in two sentences, mentioning evaporation.", "2+2?"]


def reference(model, fmt, text, max_new_tokens, eos):
    ids = torch.tensor([fmt.prompt_ids(text)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=sorted(eos), pad_token_id=fmt.tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return new[:next((k for k, t in enumerate(new) if t in eos), len(new))]


def test_batched_greedy_equals_per_prompt_generate(tiny_llama_dir):
    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    ours = generate(bb.model, fmt, PROMPTS, max_new_tokens=12, batch_size=3, device=bb.device, dtype=bb.dtype)
    for text, g in zip(PROMPTS, ours):
        assert g.tokens == reference(bb.model, fmt, text, 12, fmt.eos_ids())


def test_the_cache_grows_in_place_with_the_same_tokens(tiny_llama_dir, monkeypatch):
    """Room for 3 positions at a time: the KV cache is reallocated every few tokens, rows leave it, and the
    tokens stay those of HF's own generate."""
    from semcon.member import generate as gen

    monkeypatch.setattr(gen._GrowingLayer, "ROOM", 3)
    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    eos = {reference(bb.model, fmt, PROMPTS[1], 10, set())[6]}  # a token some rows emit: they stop early
    ours = generate(bb.model, fmt, PROMPTS, max_new_tokens=10, batch_size=5, device=bb.device, dtype=bb.dtype)
    assert [g.tokens for g in ours] == [reference(bb.model, fmt, t, 10, fmt.eos_ids()) for t in PROMPTS]
    prompts = [fmt.prompt_ids(t) for t in PROMPTS]
    cut, _ = greedy_batch(bb.model, prompts, max_new_tokens=10, eos_ids=eos, pad_id=fmt.tok.pad_token_id,
                          device=bb.device, dtype=bb.dtype, prefill_group=2)
    assert cut == [reference(bb.model, fmt, t, 10, eos) for t in PROMPTS]
    assert any(len(row) < 10 for row in cut)


def test_finished_rows_leave_the_batch(tiny_llama_dir):
    """Make some rows end at once by declaring their first greedy token an EOS id."""
    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    prompts = [fmt.prompt_ids(t) for t in PROMPTS]
    free, _ = greedy_batch(bb.model, prompts, max_new_tokens=6, eos_ids={-1}, pad_id=fmt.tok.pad_token_id,
                        device=bb.device, dtype=bb.dtype, prefill_group=2)
    # a stop token that some rows emit and others never do
    stop = {next(t for row in free for t in row if 0 < sum(t in r for r in free) < len(free))}
    calls = []
    pre = bb.model.get_decoder().register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        out, _ = greedy_batch(bb.model, prompts, max_new_tokens=6, eos_ids=stop, pad_id=fmt.tok.pad_token_id,
                           device=bb.device, dtype=bb.dtype, prefill_group=2)
    finally:
        pre.remove()
    for row, toks in enumerate(out):  # each row is the free run cut at its first stop token
        cut = next((k for k, t in enumerate(free[row]) if t in stop), len(free[row]))
        assert toks == free[row][:cut]
    decode_sizes = calls[3:]  # after three prefill groups
    assert max(decode_sizes) <= len(prompts) and decode_sizes[-1] < len(prompts)  # finished rows cost nothing


def test_confidence_is_the_mean_token_logprob_and_cut_answers_are_flagged(tiny_llama_dir):
    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    out = generate(bb.model, fmt, PROMPTS[:2], max_new_tokens=5, batch_size=2, device=bb.device, dtype=bb.dtype)
    for text, g in zip(PROMPTS[:2], out):
        prompt = fmt.prompt_ids(text)
        ids = torch.tensor([prompt + g.tokens])
        logp = torch.log_softmax(bb.model(input_ids=ids).logits[0].float(), -1)
        scored = [logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(g.tokens)]
        assert not g.finished and len(g.tokens) == 5  # the tiny random model never says end-of-turn in 5 tokens
        assert abs(g.confidence - sum(scored) / len(scored)) < 1e-4 and g.confidence <= 0
    stop = {out[0].tokens[2]}  # declare its third token an end-of-turn: that answer now ends by itself
    fmt_eos = fmt.eos_ids
    fmt.eos_ids = lambda: stop
    try:
        again = generate(bb.model, fmt, PROMPTS[:1], max_new_tokens=5, batch_size=1, device=bb.device, dtype=bb.dtype)
    finally:
        fmt.eos_ids = fmt_eos
    assert again[0].finished and again[0].tokens == out[0].tokens[:out[0].tokens.index(out[0].tokens[2])]


def test_clients_on_one_base_answer_in_one_batch_as_they_would_alone(tiny_llama_dir):
    """Three adapters (one with another rank and fewer target layers) in shared batches with finished rows
    leaving: the same token ids as each adapter generating alone."""
    from semcon.config import LoraConfig

    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    for i, lora in enumerate([LoraConfig(), LoraConfig(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])]):
        bb.add_adapter(f"c{i}", lora, seed=i)
        state = bb.adapter_state(f"c{i}")
        torch.manual_seed(10 + i)  # B = 0 would make every adapter the base model
        bb.load_adapter_state(f"c{i}", {k: torch.randn_like(v) * 0.5 for k, v in state.items()})
    names = ["c0", "c1", "c2"]
    slots = dict(zip(names, bb.hold(names)))  # the peft adapters that hold them
    alone = {}
    for name in names:
        with bb.active(name) as model:
            alone[name] = [g.tokens for g in generate(model, fmt, PROMPTS, max_new_tokens=10, batch_size=4,
                                                      device=bb.device, dtype=bb.dtype)]
    assert len({str(v) for v in alone.values()}) == 3  # the adapters answer differently
    with bb.active("c0") as model:
        together = generate(model, fmt, PROMPTS * 3, max_new_tokens=10, batch_size=8, device=bb.device,
                            dtype=bb.dtype, adapters=[slots[n] for n in names for _ in PROMPTS])
    for k, name in enumerate(names):
        assert [g.tokens for g in together[k * len(PROMPTS):(k + 1) * len(PROMPTS)]] == alone[name]
    # rows that end leave the batch, and the remaining rows keep their own adapters
    prompts = [fmt.prompt_ids(t) for t in PROMPTS] * 3
    rows = [slots[n] for n in names for _ in PROMPTS]
    mixed = [t for k, name in enumerate(names) for t in alone[name]]
    stop = {next(t for row in mixed for t in row if 0 < sum(t in r for r in mixed) < len(mixed) // 2)}
    with bb.active("c0") as model:
        out, _ = greedy_batch(model, prompts, max_new_tokens=10, eos_ids=stop, pad_id=fmt.tok.pad_token_id,
                              device=bb.device, dtype=bb.dtype, prefill_group=4, adapters=rows)
    for k, name in enumerate(names):
        with bb.active(name) as model:
            one, _ = greedy_batch(model, prompts[:len(PROMPTS)], max_new_tokens=10, eos_ids=stop,
                                  pad_id=fmt.tok.pad_token_id, device=bb.device, dtype=bb.dtype, prefill_group=4)
        assert out[k * len(PROMPTS):(k + 1) * len(PROMPTS)] == one
    assert any(len(o) < 10 for o in out) and any(len(o) == 10 for o in out)


def test_a_base_models_answer_ends_at_the_templates_next_heading(tiny_gemma3_dir, tiny_llama_dir):
    """Without a chat template an answer also ends where the format's stop text begins (lm-eval's ``until``):
    its text and tokens end before it, and it counts as finished. Chat-template models have no stop text."""
    assert Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu")).fmt.stop is None
    bb = Backbone.load(str(tiny_gemma3_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    assert fmt.stop == PLAIN_STOP
    fmt.stop = None
    free = generate(bb.model, fmt, PROMPTS[:3], max_new_tokens=8, batch_size=3, device=bb.device, dtype=bb.dtype)
    toks = free[0].tokens
    text = lambda ids: fmt.tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    # a stop text that the first answer writes with its tokens i and i + 1, and nowhere before
    piece = lambda i: text(toks[:i + 2])[len(text(toks[:i])):]  # noqa: E731
    i = next(i for i in range(1, 6) if piece(i).strip() and text(toks).index(piece(i)) == len(text(toks[:i])))
    fmt.stop = piece(i)
    ended = generate(bb.model, fmt, PROMPTS[:3], max_new_tokens=8, batch_size=3, device=bb.device, dtype=bb.dtype)
    assert ended[0].finished and not free[0].finished
    assert ended[0].tokens == toks[:i] and ended[0].text == text(toks[:i]).strip()
    for before, after in zip(free[1:], ended[1:]):
        if fmt.stop not in text(before.tokens):
            assert after == before


# --- the continuous batch ------------------------------------------------------------------------------------

def one_row(model, fmt, prompt: list[int], cap: int, eos: set[int]) -> list[int]:
    """The reference: one row alone, greedy, through the static engine (a batch of one) and the active adapter."""
    out, _ = greedy_batch(model, [prompt], max_new_tokens=cap, eos_ids=eos, pad_id=fmt.tok.pad_token_id,
                          device=torch.device("cpu"), dtype=torch.float32)
    return out[0]


def test_a_queue_longer_than_the_batch_gives_each_row_its_one_row_answer(tiny_llama_dir):
    """Mixed adapters, mixed prompt lengths and caps, a row that ends at its first token, rows that hit their cap,
    12 rows through 3 slots: every row's ids equal the one-row reference, and the cache holds 3 rows only."""
    from semcon.config import LoraConfig
    from semcon.member.generate import SlotCache, continuous_batch

    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    for i, lora in enumerate([LoraConfig(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])]):
        bb.add_adapter(f"c{i}", lora, seed=i)
        torch.manual_seed(20 + i)
        bb.load_adapter_state(f"c{i}", {k: torch.randn_like(v) * 0.5 for k, v in bb.adapter_state(f"c{i}").items()})
    texts = PROMPTS + ["A much longer instruction: " + "tell me about rivers and lakes " * 4, "Go."]
    prompts = [fmt.prompt_ids(t) for t in texts] * 2
    owner = ["c0"] * len(texts) + ["c1"] * len(texts)
    caps = [3 + (k % 4) * 3 for k in range(len(prompts))]
    with bb.active("c0") as model:  # row 0 ends at its first token, row 3 at its third
        eos = {one_row(model, fmt, prompts[0], 1, set())[0], one_row(model, fmt, prompts[3], 3, set())[2]}
    expected = []
    for name in ("c0", "c1"):
        with bb.active(name) as model:
            expected += [one_row(model, fmt, p, cap, eos) for p, cap, o in zip(prompts, caps, owner) if o == name]
    slots = dict(zip(["c0", "c1"], bb.hold(["c0", "c1"])))
    with bb.active("c0") as model:
        sizes = []
        original = SlotCache.__init__

        def spy(self, slots_, capacity):
            sizes.append((slots_, capacity))
            original(self, slots_, capacity)

        SlotCache.__init__ = spy
        try:
            out, _ = continuous_batch(model, prompts, max_new_tokens=caps, eos_ids=eos, pad_id=fmt.tok.pad_token_id,
                                      device=bb.device, dtype=bb.dtype, batch_size=3,
                                      adapters=[slots[o] for o in owner])
        finally:
            SlotCache.__init__ = original
    assert out == expected
    assert out[0] == [] and any(len(o) == cap for o, cap in zip(out, caps)) and any(
        0 < len(o) < cap for o, cap in zip(out, caps))
    assert sizes == [(3, max(map(len, prompts)) + max(caps))]  # slots for the active batch, not the queue


def test_rows_are_admitted_in_queue_order_into_the_slots_others_free(tiny_llama_dir, monkeypatch):
    """With 2 slots and rows of known lengths, the third row takes the slot of the first row to end, and no decode
    step computes more rows than slots; the grouped key/value heads are never expanded (``repeat_kv``)."""
    import transformers.models.llama.modeling_llama as llama

    from semcon.member.generate import continuous_batch

    def no_expansion(*args, **kwargs):
        raise AssertionError("repeat_kv: an expanded copy of the grouped key/value heads")

    monkeypatch.setattr(llama, "repeat_kv", no_expansion)
    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    prompts = [fmt.prompt_ids(t) for t in PROMPTS[:4]]
    prefills, decodes = [], []

    def record(module, args, kwargs):
        step = kwargs["semcon_step"]
        if step.segments is not None:  # a prefill: the slot of each packed row
            prefills.append([int(step.slots[start]) for start, _ in step.segments])
        else:
            decodes.append(len(step.positions))

    hook = bb.model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        out, _ = continuous_batch(bb.model, prompts, max_new_tokens=[2, 6, 4, 3], eos_ids={-1},
                                  pad_id=fmt.tok.pad_token_id, device=bb.device, dtype=bb.dtype, batch_size=2)
    finally:
        hook.remove()
    assert [len(o) for o in out] == [2, 6, 4, 3]
    # rows 0 and 1 fill slots 0 and 1; row 0 ends after 2 tokens and row 2 takes slot 0; row 2 ends before row 1
    # (4 tokens from its admission) and row 3 takes slot 0 again
    assert prefills == [[0, 1], [0], [0]]
    assert max(decodes) <= 2
