import pytest
import torch

from semcon.assets import join_parts
from semcon.config import LoraConfig
from semcon.models import PLAIN_TEMPLATE, Backbone, ChatFormat, load_tokenizer


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
    tok = load_tokenizer("smollm2-135m")
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
    dtypes = {n: p.dtype for n, p in backbone.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
