"""semcon validate: a config checked as a run would resolve and split it, with its cost, and nothing run."""

import pytest
import yaml
from conftest import cli, one_line_error, tiny_tree


def test_validate_prints_each_clients_rows_and_the_cost_and_runs_nothing(tiny_llama_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_tree(str(tiny_llama_dir))))
    result = cli("validate", config)
    assert result.exit_code == 0, result.output
    assert "geo" in result.output and "math" in result.output and "TFLOP" in result.output and "ok:" in result.output
    assert list(tmp_path.iterdir()) == [config]  # nothing written


def test_validate_refuses_what_a_run_would_refuse_in_one_line(tiny_llama_dir, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_tree(str(tiny_llama_dir))))
    one_line_error(cli("validate", config, "--set", "clients.0.model=smollm-135"), "did you mean smollm2-135m?")
    one_line_error(cli("validate", config, "--set", "data.examples_per_client=100000"), "private rows left")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{"messages": []}\n')
    one_line_error(cli("validate", config, "--set", f"clients.0.data={{source: jsonl, path: {bad}}}"), f"{bad}:2")


def test_the_cost_counts_label_steps_and_nothing_to_answer_for_the_references_bound(tiny_llama_dir):
    from semcon.config import load_config
    from semcon.studies.validate import plan

    tree = tiny_tree(str(tiny_llama_dir))
    mixed = plan(load_config(tree=tree))
    tree["train"] |= {"schedule": "additive", "label_steps": 2}
    additive = plan(load_config(tree=tree))
    # 2 private steps in rounds 0 and 1, 2 label steps in round 1 only (round 0 has no labels): 6 against 4
    assert additive.flops["geo"]["train"] == pytest.approx(1.5 * mixed.flops["geo"]["train"])
    tree["consensus"] = {"rule": "oracle_reference"}
    assert plan(load_config(tree=tree)).flops["geo"]["answer"] == 0 < mixed.flops["geo"]["answer"]
