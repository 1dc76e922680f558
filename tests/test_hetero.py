"""A federation of three model families with three real tokenizers: only text crosses the wire."""

import json

import pytest
from conftest import THREADS, built_once, rows

from semcon.config import load_config
from semcon.member.models import Backbone, load_tokenizer
from semcon.transport import simulation


@pytest.fixture(scope="module")
def hetero_tree(tiny_llama_dir, tiny_gemma3_dir, tiny_qwen2_dir):
    return {
        "name": "hetero-tiny", "seed": 0, "rounds": 1, "precision": "fp32", "threads": THREADS,
        "clients": [
            {"name": "llama", "model": str(tiny_llama_dir), "data": {"source": "wiki", "categories": ["Geography"]}},
            {"name": "gemma", "model": str(tiny_gemma3_dir), "data": {"source": "gsm8k"},
             "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}, "lr": 1e-3},
            {"name": "qwen", "model": str(tiny_qwen2_dir), "data": {"source": "chatterbot"},
             "batch_size": 2, "max_new_tokens": 6},
        ],
        "data": {"examples_per_client": 6, "eval_per_domain": 3},
        "public": {"num_prompts": 5},
        "generate": {"max_new_tokens": 8, "batch_size": 4},
        "train": {"steps": 2, "batch_size": 4, "max_length": 96, "truncate": "response"},
        "eval": {"generate": False, "energy": False, "before": False, "every_round": False},
        "consensus": {"truncated": "keep"},  # random tiny models never finish an answer in 8 tokens
    }


@pytest.fixture(scope="module")
def resident(hetero_tree, tmp_path_factory, worker_id):
    """One round of the three families, every base model resident (built once for all workers)."""
    out = built_once(tmp_path_factory, worker_id, "hetero-resident",
                     lambda path: simulation.run(load_config(tree=hetero_tree), path))
    return out, json.loads((out / "summary.json").read_text())


def test_three_families_federate_on_text(hetero_tree, resident):
    path, summary = resident
    assert summary["clients"] == ["llama", "gemma", "qwen"]
    labels = rows(path / "pseudo_labels" / "round_01.jsonl")
    assert labels and all(isinstance(r["text"], str) for r in labels)
    # every client tokenizes the same pseudo-label text with its own tokenizer
    text = labels[0]["text"] or "plain text"
    vocab = {}
    for client in hetero_tree["clients"]:
        tok = load_tokenizer(client["model"])
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids and max(ids) < len(tok)
        vocab[client["name"]] = len(tok)
    assert len(set(vocab.values())) == 3  # three different tokenizers
    ledger = rows(path / "ledger.jsonl")
    assert {r["kind"] for r in ledger} == {"config", "public", "upload", "download"}
    per_round = summary["per_round"]
    assert all("train" in r["phase_peak_rss_gb"] for r in per_round)
    # per-client settings took effect: gemma's adapter is rank 4 on q,v only
    config = json.loads((path / "adapters" / "gemma" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_one_model_at_a_time_gives_the_same_run(hetero_tree, resident, tmp_path):
    path, summary = resident
    swapped = simulation.run(load_config(tree={**hetero_tree, "resident_models": "one"}), tmp_path)
    assert (path / "pseudo_labels/round_01.jsonl").read_text() == (tmp_path / "pseudo_labels/round_01.jsonl").read_text()
    assert summary["eval_after"] == swapped["eval_after"]


def test_gemma_base_model_gets_plain_prompts_with_bos(tiny_gemma3_dir):
    import torch

    bb = Backbone(str(tiny_gemma3_dir), torch.float32, torch.device("cpu"))
    fmt = bb.fmt
    assert not fmt.has_template
    ids = fmt.prompt_ids("Say hi")
    assert ids[0] == bb.tokenizer.bos_token_id
    assert "### Response:" in bb.tokenizer.decode(ids)


@pytest.mark.parametrize("method", ["fedavg", "fedprox"])
def test_parameter_averaging_refuses_the_federation(hetero_tree, method, tmp_path):
    """``semcon run`` refuses it in one line before any work (the config itself is valid)."""
    import yaml
    from typer.testing import CliRunner

    from semcon import cli

    config = tmp_path / "hetero.yaml"
    config.write_text(yaml.safe_dump({**hetero_tree, "method": method}))
    result = CliRunner().invoke(cli.app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and f"{method} averages adapter weights" in result.output
    assert not (tmp_path / "run").exists()
