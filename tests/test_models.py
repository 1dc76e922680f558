import copy

import pytest
import torch

from semcon.assets import join_parts
from semcon.config import LoraConfig
from semcon.member.models import PLAIN_TEMPLATE, Backbone, ChatFormat, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2-135m")


def test_chat_example_masks_exactly_the_prompt(tok):
    fmt = ChatFormat(tok)
    ids, labels = fmt.example_ids("What is 2+2?", "It is 4.", max_length=256)
    prompt = fmt.prompt_ids("What is 2+2?")
    assert ids[:len(prompt)] == prompt
    assert labels[:len(prompt)] == [-100] * len(prompt)
    answer = [t for t in labels if t != -100]
    assert tok.decode(answer).startswith("It is 4.<|im_end|>")
    assert fmt.has_template and "<|im_start|>assistant" in fmt.prompt_text("hi")


def test_too_long_examples_are_dropped_or_lose_the_response_tail_never_the_prompt(tok):
    fmt = ChatFormat(tok)
    assert fmt.example_ids("word " * 400, "short answer", max_length=64) is None
    assert fmt.example_ids("word " * 400, "short answer", max_length=64, truncate="response") is None
    ids, labels = fmt.example_ids("Say it.", "word " * 100, max_length=64, truncate="response")
    prompt = fmt.prompt_ids("Say it.")
    assert len(ids) == 64 and ids[:len(prompt)] == prompt and labels[:len(prompt)] == [-100] * len(prompt)
    assert fmt.example_ids("Say it.", "word " * 100, max_length=64) is None  # the default drops it


def test_cut_answers_get_no_end_of_turn(tok):
    fmt = ChatFormat(tok)
    _, labels = fmt.example_ids("What is 2+2?", "It is 4", end=False)
    assert tok.decode([t for t in labels if t != -100]) == "It is 4"
    assert fmt.content_text("What is 2+2?", "It is 4") == "It is 4"


def test_plain_template_for_models_without_chat_template(tok):
    tok = copy.deepcopy(tok)  # load_tokenizer's object is shared by every caller in the process
    tok.chat_template = None
    fmt = ChatFormat(tok)
    assert not fmt.has_template
    assert fmt.prompt_text("Say hi") == PLAIN_TEMPLATE.format(instruction="Say hi")
    ids, labels = fmt.example_ids("Say hi", "Hi!", 64)
    assert tok.decode([t for t in labels if t != -100]) == "Hi!" + tok.eos_token


def test_adapters_share_one_base_and_start_as_the_base(tiny_llama_dir):
    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    bb.add_adapter("alice", LoraConfig(r=4), seed=0)
    bb.add_adapter("bob", LoraConfig(r=4), seed=1)
    assert bb.adapters == ["alice", "bob"]
    x = torch.tensor([[1, 2, 3, 4]])
    with bb.active(None) as m:
        base = m(input_ids=x).logits
    with bb.active("bob") as m:
        assert torch.allclose(m(input_ids=x).logits, base)  # B = 0 at init
    state = bb.adapter_state("alice")
    assert state and all(v.dtype == torch.float32 for v in state.values())


def test_join_parts_checks_sha256(tmp_path):
    import hashlib

    parts = []
    for i, chunk in enumerate([b"abc", b"def", b"g"]):
        parts.append(tmp_path / f"part{i}")
        parts[-1].write_bytes(chunk)
    good = hashlib.sha256(b"abcdefg").hexdigest()
    out = join_parts(parts, tmp_path / "joined.gguf", good)
    assert out.read_bytes() == b"abcdefg"
    assert join_parts(parts, out, good) == out  # reused
    with pytest.raises(ValueError, match="checksum mismatch"):
        join_parts(parts, tmp_path / "other.gguf", "0" * 64)
    assert not (tmp_path / "other.gguf").exists()


def test_a_client_named_like_a_module_keeps_the_base_weights_in_their_dtype(tiny_llama_dir):
    """Adapter weights are found by module structure: a client called ``model`` (a segment of every base
    weight's name) gets fp32 adapters while the bf16 base stays bf16."""
    backbone = Backbone(str(tiny_llama_dir), torch.bfloat16, torch.device("cpu"))
    backbone.add_adapter("model", LoraConfig(r=2), seed=0)
    backbone.hold(["model"])
    dtypes = {n: p.dtype for n, p in backbone.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}


def test_many_clients_share_a_few_slots_and_keep_their_own_weights(tiny_llama_dir, tmp_path):
    """40 clients on one base: slots are built only for the largest request, every client keeps its own
    weights across swaps, a fresh adapter is drawn from its seed, and a saved adapter loads with peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    names = [f"c{i:02d}" for i in range(40)]
    for i, name in enumerate(names):
        bb.add_adapter(name, LoraConfig(r=4), seed=7 if name in ("c00", "c01") else i)
    assert bb.adapters == names and not hasattr(bb.model, "peft_config")  # nothing built yet
    assert all(bb.adds_nothing(n) for n in names)
    mine = {}
    for i, name in enumerate(names):  # one at a time, as training goes: one slot serves everyone
        torch.manual_seed(100 + i)
        mine[name] = {k: torch.randn_like(v) for k, v in bb.adapter_state(name).items()}
        bb.load_adapter_state(name, mine[name])
    assert list(bb.model.peft_config) == ["slot0"]
    bb.hold(names[:3])
    assert len(bb.model.peft_config) == 3
    x = torch.tensor([[1, 2, 3, 4]])
    for name in reversed(names):
        assert all(torch.equal(mine[name][k], v) for k, v in bb.adapter_state(name).items())
        assert not bb.adds_nothing(name)
    with bb.active("c05") as m:
        expected = m(input_ids=x).logits
    with bb.active(None) as m:
        assert not torch.allclose(m(input_ids=x).logits, expected)
    with pytest.raises(ValueError, match="more than 16 adapters"):
        bb.hold(names[:17])

    fresh = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    for name in ("c00", "c01", "c02"):
        fresh.add_adapter(name, LoraConfig(r=4), seed=7 if name != "c02" else 2)
    a, b, c = (fresh.adapter_state(n) for n in ("c00", "c01", "c02"))
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)
    assert all(fresh.adds_nothing(n) for n in ("c00", "c01", "c02"))  # B = 0
    with pytest.raises(ValueError, match="adapter of client 'c00'.*missing"):
        fresh.load_adapter_state("c00", {})

    path = bb.save_adapter("c05", tmp_path)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    loaded = PeftModel.from_pretrained(base, str(path)).eval()
    assert torch.allclose(loaded(input_ids=x).logits, expected, atol=1e-5)
