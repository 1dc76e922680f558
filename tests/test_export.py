"""Tests of semcon.studies.export: a finished run's adapters load in PEFT and transformers with the same logits as inside
semcon, with a model card; bad requests are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from semcon import cli
from semcon.config import load_config
from semcon.member.models import Backbone
from semcon.studies.export import ExportError, export

PROMPT = "Tell me about the rivers of Europe."


def base_dir(run) -> str:
    """The run's base model (the tiny model of the pytest worker that built the shared run)."""
    return load_config(run / "config.yaml").clients[0].model


def semcon_logits(run, client: str) -> torch.Tensor:
    """The logits of ``client``'s final model as semcon computes them: its base model with the adapter state of
    its newest checkpoint in an adapter slot."""
    cfg = load_config(run / "config.yaml")
    spec = next(c.model for c in cfg.clients if c.name == client)
    backbone = Backbone.load(spec, torch.float32, torch.device("cpu"))
    backbone.add_adapter(client, cfg.train.lora, seed=0)
    newest = max((run / "checkpoints" / "clients" / client).glob("round_*.safetensors"))
    backbone.load_adapter_state(client, load_file(newest))
    with backbone.active(client) as model, torch.no_grad():
        return model(**tokens(backbone.tokenizer)).logits


def tokens(tokenizer) -> dict:
    return tokenizer(PROMPT, return_tensors="pt")


def test_exported_adapters_and_merged_models_give_semcons_logits(tracked_run, tmp_path):
    from peft import PeftModel

    written = export(tracked_run, tmp_path / "adapters")
    assert [p.name for p in written] == ["geo", "math"]
    inside = semcon_logits(tracked_run, "geo")
    assert not torch.allclose(inside, semcon_logits(tracked_run, "math"))  # the clients differ
    base = AutoModelForCausalLM.from_pretrained(base_dir(tracked_run), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapters" / "geo")).eval()
    tok = Backbone("smollm2-135m", torch.float32, torch.device("cpu")).tokenizer
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**tokens(tok)).logits, inside, rtol=1e-5, atol=1e-5)

    (merged,) = export(tracked_run, tmp_path / "merged", client="geo", merge=True)
    assert merged == tmp_path / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert "lora" not in " ".join(n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(**tokens(tok)).logits, inside, rtol=1e-4, atol=1e-4)


def test_the_model_card_says_where_the_weights_came_from(tracked_run, tmp_path):
    (path,) = export(tracked_run, tmp_path / "geo", client="geo")
    card = (path / "README.md").read_text(encoding="utf-8")
    summary = json.loads((tracked_run / "summary.json").read_text())
    assert card.startswith("---\nlibrary_name: peft\nbase_model: ")
    assert f"base_model: {base_dir(tracked_run)}\n" in card
    assert "**Method:** `semantic_consensus`, 1 communication round after" in card
    assert "**This client's private data:** `wiki`, categories Geography (partition `category`)" in card
    assert f"{summary['bytes_up']:,} B up, {summary['bytes_down']:,} B down" in card
    bpb = summary["eval_after"]["geo"]["gsm8k"]["bpb"]
    assert f"| gsm8k | {bpb:.4f} |" in card
    assert "peft=DIR" in card

    from semcon.studies.export import model_card

    embedded = model_card(load_config(tracked_run / "config.yaml", check_files=False), summary, "geo", "smollm2-135m", False)
    assert "\nbase_model:" not in embedded and str(Path.home()) not in embedded and ".cache" not in embedded
    assert "semcon_base_model: smollm2-135m" in embedded
    assert 'from_pretrained(resolve_model("smollm2-135m"))' in embedded


def test_what_cannot_be_exported_is_one_line(tracked_run, tmp_path):
    with pytest.raises(ExportError, match=r"no adapter of client 'nobody'; it has geo, math"):
        export(tracked_run, tmp_path / "x", client="nobody")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tracked_run, unfinished, ignore=shutil.ignore_patterns("wandb", "tensorboard"))
    (unfinished / "summary.json").unlink()
    with pytest.raises(ExportError, match=r"the run has not finished \(no summary.json\); `semcon resume"):
        export(unfinished, tmp_path / "y")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    result = CliRunner().invoke(cli.app, ["export", str(tracked_run), "--client", "geo", "--out", str(tmp_path / "full")])
    assert result.exit_code == 2 and "is not empty: choose a new --out" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_exported_adapter_is_scored_on_your_own_jsonl_beside_its_base(tracked_run, tmp_path):
    from semcon.studies.export import evaluate_export, exported_base

    (path,) = export(tracked_run, tmp_path / "geo", client="geo")
    assert exported_base(path) == base_dir(tracked_run)
    data = tmp_path / "held.jsonl"
    rows = [{"instruction": "Name a river in France.", "response": "The Loire."},
            {"messages": [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}]},
            {"prompt": "Capital of Spain?", "completion": "Madrid."}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = evaluate_export(path, data, items=0)
    assert set(found) == {"base", "adapter"} and set(found["adapter"]["held"]) == {"nll", "bpb", "bpb_plain"}
    assert found["base"]["held"]["bpb"] != found["adapter"]["held"]["bpb"]
    result = CliRunner().invoke(cli.app, ["evaluate", str(path), "--data", str(data), "--items", "2"])
    assert result.exit_code == 0, result.output
    assert "rouge_l" in result.output and "base" in result.output and "adapter" in result.output
    bad = CliRunner().invoke(cli.app, ["evaluate", str(tmp_path), "--data", str(data)])
    assert bad.exit_code == 2 and "neither an exported adapter" in bad.output
