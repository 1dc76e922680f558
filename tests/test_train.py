import random

import pytest
import torch

from semcon.config import LoraConfig
from semcon.member.models import Backbone
from semcon.member.train import collate, micro_batches, nll_sums, response_nll, tokenize, train_lora

PAIRS = [("What is the capital of France?", "Paris is the capital of France.", 1.0),
         ("Add 2 and 3.", "2 + 3 = 5. The answer is 5.", 1.0),
         ("Name a primary colour.", "Red is a primary colour.", 1.0),
         ("Say hello in French.", "Bonjour!", 1.0)]


@pytest.fixture()
def bb(tiny_llama_dir):
    b = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    b.add_adapter("alice", LoraConfig(r=4), seed=0)
    b.add_adapter("bob", LoraConfig(r=4), seed=1)
    return b


def mean_nll(model, fmt, examples, **kw) -> float:
    """Teacher-forced mean NLL per response token."""
    sums, counts, _ = nll_sums(model, fmt, examples, **kw)
    return sum(sums) / max(sum(counts), 1)


def test_response_nll_equals_hf_loss_with_masked_labels(bb):
    data, _ = tokenize(bb.fmt, PAIRS, 96)
    batch = collate(data, bb.tokenizer.pad_token_id, torch.device("cpu"))
    with bb.active(None) as m, torch.no_grad():
        nll, rows = response_nll(m, batch)
        hf = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert nll.mean().item() == pytest.approx(hf.item(), rel=1e-5)
    # loss only where labels exist: one value per response token
    assert len(nll) == int((batch["labels"][:, 1:] != -100).sum())
    assert sorted(set(rows.tolist())) == [0, 1, 2, 3]


def test_training_changes_only_the_active_adapter_and_lowers_loss(bb):
    data, _ = tokenize(bb.fmt, PAIRS, 96)
    before_a = {k: v.clone() for k, v in bb.adapter_state("alice").items()}
    before_b = {k: v.clone() for k, v in bb.adapter_state("bob").items()}
    with bb.active("alice") as m:
        start = mean_nll(m, bb.fmt, data, batch_size=4, device=bb.device, dtype=bb.dtype)
        stats = train_lora(m, bb.fmt, data, steps=30, batch_size=4, lr=1e-2, seed=0, device=bb.device,
                           dtype=bb.dtype)
        end = mean_nll(m, bb.fmt, data, batch_size=4, device=bb.device, dtype=bb.dtype)
    assert stats.steps == 30 and stats.tokens > 0
    assert end < start - 0.2
    assert any(not torch.equal(before_a[k], v) for k, v in bb.adapter_state("alice").items())
    assert all(torch.equal(before_b[k], v) for k, v in bb.adapter_state("bob").items())


def test_micro_batches_accumulate_to_the_same_gradient(bb):
    data, _ = tokenize(bb.fmt, PAIRS, 96)

    # lr=0 keeps the weights, so both calls see the same model: the accumulated loss must match
    with bb.active("alice") as m:
        whole = train_lora(m, bb.fmt, data, steps=1, batch_size=4, lr=0.0, seed=0, device=bb.device,
                           dtype=bb.dtype, micro_batch_tokens=10_000)
        split = train_lora(m, bb.fmt, data, steps=1, batch_size=4, lr=0.0, seed=0, device=bb.device,
                           dtype=bb.dtype, micro_batch_tokens=1)
    assert split.losses[0] == pytest.approx(whole.losses[0], rel=1e-5)
    assert len(micro_batches(data, 1)) == 4 and len(micro_batches(data, 10_000)) == 1


def _first_step_grads(bb, data) -> list[torch.Tensor]:
    """The gradient of the LoRA weights in one step on ``data`` (one batch, lr=0)."""
    grads = []
    with bb.active("alice") as m:
        hooks = [p.register_post_accumulate_grad_hook(lambda p: grads.append(p.grad.clone()))
                 for p in m.parameters() if p.requires_grad]
        try:
            train_lora(m, bb.fmt, data, steps=1, batch_size=len(data), lr=0.0, seed=0, device=bb.device,
                       dtype=bb.dtype, micro_batch_tokens=10_000)
        finally:
            for h in hooks:
                h.remove()
    return grads


def test_pseudo_label_weight_is_a_loss_weight(bb):
    """λ scales the gradient even in a batch made only of pseudo-labelled rows (Σ w·nll / Σ tokens)."""
    once, _ = tokenize(bb.fmt, [(i, r, 0.5) for i, r, _ in PAIRS], 96)
    twice, _ = tokenize(bb.fmt, [(i, r, 1.0) for i, r, _ in PAIRS], 96)
    g1, g2 = _first_step_grads(bb, once), _first_step_grads(bb, twice)
    assert len(g1) == len(g2) > 0 and any(g.abs().sum() > 0 for g in g1)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, 2 * a, rtol=1e-4, atol=1e-8)
    mixed, _ = tokenize(bb.fmt, [(i, r, 1.0) for i, r, _ in PAIRS[:2]] + [(i, r, 0.0) for i, r, _ in PAIRS[2:]], 96)
    with bb.active("alice") as m:
        loss = train_lora(m, bb.fmt, mixed, steps=1, batch_size=4, lr=0.0, seed=0, device=bb.device, dtype=bb.dtype)
        full = train_lora(m, bb.fmt, twice, steps=1, batch_size=4, lr=0.0, seed=0, device=bb.device, dtype=bb.dtype)
    assert 0 < loss.losses[0] < full.losses[0]  # weight-0 rows add tokens to the denominator, nothing above it


def test_long_examples_are_dropped_and_counted_never_cut_silently(bb):
    long = ("Explain.", "word " * 200, 1.0)
    kept, dropped = tokenize(bb.fmt, [*PAIRS, long], 64)
    assert dropped == 1 and len(kept) == len(PAIRS)
    cut, dropped = tokenize(bb.fmt, [*PAIRS, long], 64, truncate="response")
    prompt = bb.fmt.prompt_ids("Explain.")
    assert dropped == 0 and len(cut[-1].ids) == 64 and cut[-1].ids[:len(prompt)] == prompt  # whole prompt kept


def test_length_grouped_batches_cover_every_example_once():
    from semcon.member.train import TokenizedExample, length_grouped_batches

    data = [TokenizedExample(list(range(n)), list(range(n))) for n in random.Random(0).choices(range(5, 50), k=37)]
    batches = length_grouped_batches(data, 8, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(37))
    spread = [max(len(data[i].ids) for i in b) - min(len(data[i].ids) for i in b) for b in batches]
    assert max(spread) < 45 / 2  # grouped by length: little padding inside a batch


def test_training_a_model_without_an_active_adapter_is_refused(tiny_llama_dir):
    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    bb.add_adapter("alice", LoraConfig(r=4), seed=0)  # registered, not built until it is activated
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_lora(bb.model, bb.fmt, [], steps=1, batch_size=1, lr=0.1, seed=0, device=bb.device, dtype=bb.dtype)
