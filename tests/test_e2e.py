"""End to end on the embedded SmolLM2-135M and MiniLM, through the real command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.long(120)
def test_two_clients_one_round_on_embedded_models(tmp_path):
    out = tmp_path / "run"
    overrides = [
        "rounds=1", "public.num_prompts=4", "generate.max_new_tokens=16", "train.steps=1", "train.batch_size=2",
        "train.max_length=128", "train.truncate=response",  # short steps: a step on 2 long rows takes seconds
        "data.examples_per_client=2", "data.eval_per_domain=2", "eval.max_new_tokens=16", "eval.before=false",
        "consensus.truncated=keep",  # 16 tokens cut most real answers: keep them (flagged) so the round has labels
        "clients=[{name: geo, data: {source: wiki, categories: [Geography]}}, {name: math, data: {source: gsm8k}}]",
    ]
    cmd = [sys.executable, "-m", "semcon", "run", "configs/demo.yaml", "--out", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out bits per byte" in proc.stdout and "pseudo-labels of round 1" in proc.stdout
    assert "x more" in proc.stdout.split("LoRA-FedAvg of these adapters")[1] and f"report: {out}/report.md" in proc.stdout

    for name in ("config.yaml", "metrics.jsonl", "ledger.jsonl", "summary.json", "pseudo_labels/round_01.jsonl",
                 "adapters/geo/adapter_model.safetensors", "adapters/math/adapter_config.json"):
        assert (out / name).is_file(), name
    labels = rows(out / "pseudo_labels/round_01.jsonl")
    assert 1 <= len(labels) <= 4
    assert all(row["client"] in ("geo", "math") and row["text"].strip() for row in labels)
    assert all(-1.0 <= row["agreement"] <= 1.0 for row in labels)
    assert all(isinstance(row["finished"], bool) and row["confidence"] <= 0 for row in labels)
    round_1 = next(r for r in rows(out / "metrics.jsonl") if r.get("round") == 1)
    assert set(round_1["cut_share"]) == {"geo", "math"} and all(0 <= v <= 1 for v in round_1["cut_share"].values())
    assert round_1["answer_quality"]["prompts"] == len(labels)  # every public prompt here has a held-back reference
    ledger = rows(out / "ledger.jsonl")
    assert sorted((r["round"], r["client"], r["direction"], r["kind"]) for r in ledger) == [
        (0, c, "down", k) for c in ("geo", "math") for k in ("config", "public")] + [
        (1, c, d, k) for c in ("geo", "math") for d, k in (("down", "download"), ("up", "upload"))]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["eval_after"]) == {"geo", "math"}
    assert set(summary["eval_after"]["geo"]) == {"wiki:Geography", "gsm8k"}
    gsm = summary["eval_after"]["math"]["gsm8k"]
    assert {"nll", "bpb", "rouge_l", "cosine", "exact_match"} <= set(gsm) and gsm["nll"] > 0 and gsm["bpb"] > 0
    # a 135M model answering real prompts gives real text: more than a few bytes each
    assert summary["bytes_up"] > 4 * 2 * 10
