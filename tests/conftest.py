"""Shared fixtures: tiny random models built in-process from configs, the real embedder, seeds."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=r"Adapter name .* should not be contained in the prefix")


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template, saved as a model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from semcon.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def embedder():
    from semcon.embed import Embedder

    return Embedder("all-minilm-l6-v2")


def tiny_tree(model: str, **top) -> dict:
    """A small 2-client federation config (as a dict) on ``model``."""
    tree = {
        "name": "tiny", "seed": 0, "rounds": 1, "precision": "fp32", "threads": 2,
        "clients": [
            {"name": "geo", "model": model, "data": {"source": "wiki", "categories": ["Geography"]}},
            {"name": "math", "model": model, "data": {"source": "gsm8k"}},
        ],
        "data": {"examples_per_client": 8, "eval_per_domain": 4},
        "public": {"num_prompts": 6},
        "generate": {"max_new_tokens": 8, "batch_size": 4},
        "train": {"steps": 2, "batch_size": 4, "max_length": 96},
    }
    tree.update(top)
    return tree
