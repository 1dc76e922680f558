"""`semcon compare` and `semcon comm` through the command line, on tiny models."""

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import tiny_tree

ROOT = Path(__file__).resolve().parents[1]


def semcon(*args):
    return subprocess.run([sys.executable, "-m", "semcon", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_compare_writes_a_report_with_every_method(tiny_llama_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_tree(str(tiny_llama_dir))))
    out = tmp_path / "cmp"
    proc = semcon("compare", str(config), "--methods", "semantic_consensus,fedavg,local", "--out", str(out),
                  "--set", "public.num_prompts=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for method in ("semantic_consensus", "fedavg", "local"):
        assert (out / method / "ledger.jsonl").is_file() and f"| {method} |" in report
    for plot in ("quality_per_round.png", "bytes_per_round.png", "seconds_per_phase.png"):
        assert (out / plot).stat().st_size > 1000 and plot in report
    assert "modelled" in report and "Energy:" in report
    assert "fedavg moved" in report and "analytic for this model" in report  # shapes read from config.json
    sc_line = next(line for line in report.splitlines() if line.startswith("| semantic_consensus |"))
    assert "e-" in sc_line.split("|")[-6]  # bytes relative to fedavg: a small fraction


def test_compare_reports_fedavg_not_applicable_and_fails_when_it_is_all(tiny_llama_dir, tmp_path):
    tree = tiny_tree(str(tiny_llama_dir))
    tree["clients"][1]["model"] = "some/other-model"
    config = tmp_path / "hetero.yaml"
    config.write_text(yaml.safe_dump(tree))
    proc = semcon("compare", str(config), "--methods", "fedavg", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "fedavg averages adapter weights" in proc.stderr and "math=some/other-model" in proc.stderr


def test_comm_lands_near_the_papers_ratio():
    proc = semcon("comm", "llama-3.1-405b", "--rank", "32", "--targets", "q_proj,v_proj")
    assert proc.returncode == 0, proc.stderr
    assert "1,011.5" in proc.stdout and "assumptions" in proc.stdout
    bad = semcon("comm", "--targets", "nope")
    assert bad.returncode == 2 and "nope" in bad.stderr
