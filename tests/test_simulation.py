"""A tiny federation end to end in-process: the run directory, reproducibility, rejected uploads."""

import json

import pytest
from conftest import built_once, rows, tiny_tree

from semcon.config import config_key, load_config
from semcon.member.client import Client
from semcon.protocol import Upload
from semcon.transport import simulation
from semcon.transport.assembly import assemble


@pytest.fixture(scope="session")
def tiny_run(tiny_llama_dir, tmp_path_factory, worker_id):
    """A tiny run that also evaluates the base model (built once for all workers)."""
    cfg = load_config(tree=tiny_tree(str(tiny_llama_dir), eval={"before": True}))
    out = built_once(tmp_path_factory, worker_id, "tiny-run", lambda path: simulation.run(cfg, path / "run")) / "run"
    return cfg, out, json.loads((out / "summary.json").read_text())


def test_run_directory_has_every_file(tiny_run):
    cfg, out, summary = tiny_run
    assert load_config(out / "config.yaml") == cfg
    ledger = rows(out / "ledger.jsonl")
    assert sorted((r["round"], r["client"], r["direction"], r["kind"]) for r in ledger) == [
        (0, "geo", "down", "config"), (0, "geo", "down", "public"), (0, "math", "down", "config"),
        (0, "math", "down", "public"),  # once per run, not in every message
        (1, "geo", "down", "download"), (1, "geo", "up", "upload"), (1, "math", "down", "download"),
        (1, "math", "up", "upload")]
    assert all(r["encoded_bytes"] > 0 and r["raw_bytes"] > 0 for r in ledger)
    labels = rows(out / "pseudo_labels" / "round_01.jsonl")
    assert labels and set(labels[0]) >= {"prompt_id", "prompt", "client", "text", "agreement"}
    public = rows(out / "public.jsonl")  # the prompts, written once
    assert len(public) == cfg.public.num_prompts and {lab["prompt_id"] for lab in labels} <= {p["id"] for p in public}
    metrics = rows(out / "metrics.jsonl")
    rounds = [m for m in metrics if m["event"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["pseudo_labels"] + rounds[1]["unlabelled"] == cfg.public.num_prompts
    assert {m["stage"] for m in metrics if m["event"] == "eval"} == {"before", "after"}
    assert summary["bytes_up"] == sum(r["encoded_bytes"] for r in ledger if r["direction"] == "up")
    for client in ("geo", "math"):
        assert (out / "adapters" / client / "adapter_model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text())["clients"] == ["geo", "math"]
    # the fp32 adapter's size, recorded once at the run's end for the reports' LoRA-FedAvg comparison
    from safetensors.torch import load_file

    tensors = load_file(out / "adapters" / "geo" / "adapter_model.safetensors")
    assert summary["adapter_bytes"] == 4 * sum(t.numel() for t in tensors.values())


def test_replaying_a_competence_rule_on_a_run_without_competence_says_so(tiny_run):
    from conftest import cli, one_line_error

    one_line_error(cli("replay", tiny_run[1], "--rule", "gated"), "this run's uploads carry none")


def test_same_seed_same_pseudo_labels(tiny_run, tmp_path):
    cfg, out, _ = tiny_run
    again = tmp_path / "again"
    simulation.run(load_config(out / "config.yaml"), again)
    assert (again / "pseudo_labels/round_01.jsonl").read_text() == (out / "pseudo_labels/round_01.jsonl").read_text()
    assert (again / "ledger.jsonl").read_text() == (out / "ledger.jsonl").read_text()


def test_the_references_only_bound_answers_nothing_and_fresh_prompts_change_each_round(tiny_llama_dir, tmp_path):
    tree = tiny_tree(str(tiny_llama_dir), rounds=2, public={"num_prompts": 3, "per_round": "fresh"},
                     consensus={"rule": "oracle_reference"})
    tree["train"] |= {"schedule": "additive", "label_steps": 1}
    summary = simulation.run(load_config(tree=tree), tmp_path / "run")
    out = tmp_path / "run"
    assert not [r for r in rows(out / "ledger.jsonl") if r["direction"] == "up"] and summary["bytes_up"] == 0
    public = {p["id"]: p for p in rows(out / "public.jsonl")}
    asked = [[lab["prompt_id"] for lab in rows(out / f"pseudo_labels/round_{t:02d}.jsonl")] for t in (1, 2)]
    assert asked == [["p0000", "p0001", "p0002"], ["p0003", "p0004", "p0005"]] and len(public) == 6
    assert all(lab["text"] == public[lab["prompt_id"]]["reference"]
               for t in (1, 2) for lab in rows(out / f"pseudo_labels/round_{t:02d}.jsonl"))
    per_round = [r for r in rows(out / "metrics.jsonl") if r["event"] == "round"]
    assert [len(r["train_loss"]["geo"]) for r in per_round] == [2, 3, 3]  # private steps, then one over labels
    assert all("generate" not in r["seconds"] for r in per_round)


def test_a_client_uploading_garbage_is_rejected_and_the_run_goes_on(tiny_llama_dir, tmp_path, monkeypatch):
    real = Client.upload_of

    def tamper(self, round, prompts, outs):
        msg = real(self, round, prompts, outs)
        if self.name == "math":  # a client whose upload is for the wrong round
            msg = Upload(round=msg.round + 5, client=msg.client, answers=msg.answers, finished=msg.finished)
        return msg

    monkeypatch.setattr(Client, "upload_of", tamper)
    tree = tiny_tree(str(tiny_llama_dir), rounds=1, min_clients=1)
    summary = simulation.run(load_config(tree=tree), tmp_path)
    last = summary["per_round"][-1]
    assert "math" in last["rejected"] and last["accepted"] == ["geo"]
    labels = rows(tmp_path / "pseudo_labels" / "round_01.jsonl")
    assert {row["client"] for row in labels} <= {"geo"}


def test_an_answer_longer_than_the_server_takes_is_cut_and_flagged_not_rejected(tiny_llama_dir):
    cfg = load_config(tree=tiny_tree(str(tiny_llama_dir), consensus={"max_answer_chars": 5}))
    fed = assemble(cfg)
    up = fed.clients[0].answer(1, fed.prompts)
    assert all(len(t) <= 5 for t in up.answers.values())
    long = [pid for pid, t in up.answers.items() if len(t) == 5]
    assert long and not any(up.finished[pid] for pid in long)  # cut, so flagged: never a default candidate
    assert fed.algorithm.accept(1, {fed.clients[0].name: up})[1] == {}  # accepted


def test_a_client_that_raises_is_reported_as_failed_and_the_round_goes_on(tiny_llama_dir, tmp_path, monkeypatch):
    real = Client.train

    def flaky(self, round, prompts, prox_mu=0.0, on_step=None):
        if self.name == "math" and round == 1:
            raise RuntimeError("out of memory")
        return real(self, round, prompts, prox_mu=prox_mu, on_step=on_step)

    monkeypatch.setattr(Client, "train", flaky)
    tree = tiny_tree(str(tiny_llama_dir), rounds=1, min_clients=1)
    summary = simulation.run(load_config(tree=tree), tmp_path)
    one = summary["per_round"][1]
    assert one["failed"] == {"math": "RuntimeError: out of memory"} and one["completed"] == ["geo"]


def test_a_finished_run_leaves_no_model_alive(tiny_llama_dir, tmp_path, monkeypatch):
    """A compare runs many federations in one process: each must free its models when it ends."""
    import gc
    import weakref

    from semcon.member import models

    load, loaded = models.load_causal_lm, []

    def tracked(*args, **kwargs):
        model = load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(models, "load_causal_lm", tracked)
    simulation.run(load_config(tree=tiny_tree(str(tiny_llama_dir))), tmp_path)
    gc.collect()
    assert loaded and all(ref() is None for ref in loaded)


def test_config_key_separates_what_decides_round_0_the_answers_and_the_run(tiny_llama_dir):
    base = tiny_tree(str(tiny_llama_dir))

    def key(level, **top):
        tree = json.loads(json.dumps(base))
        for dotted, value in top.items():
            section, field = dotted.split("__")
            tree.setdefault(section, {})[field] = value
        return config_key(load_config(tree=tree), level)

    # no attackers whatever their kind: the same run
    assert key("run", adversaries__kind="random", adversaries__count=0) == key("run", adversaries__kind="sybil",
                                                                               adversaries__count=0) == key("run")
    # the rule: the same answers, another run
    assert key("answers", consensus__rule="gated", consensus__competence="knn") != key("answers")
    assert key("answers", consensus__sybil_merge=0.995) == key("answers") != key("run", consensus__sybil_merge=0.995)
    # what acts only on uploads: the same round 0, other answers
    for upload_only in ({"adversaries__kind": "random"}, {"privacy__filter": ["ngram"]}):
        assert key("round0", **upload_only) == key("round0") and key("answers", **upload_only) != key("answers")
    # an attacker that trains on poisoned data: another round 0
    assert key("round0", adversaries__kind="random", adversaries__poison_private=True) != key("round0")


def test_a_cell_that_differs_only_in_its_attack_starts_from_the_other_cells_round_0(tiny_llama_dir, tmp_path):
    import yaml
    from conftest import cli

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(str(tiny_llama_dir), adversaries={"kind": "random"})))
    out = tmp_path / "abl"
    result = cli("ablate", path, "--grid", "adversaries.kind=random,echo", "--grid", "adversaries.count=0,1",
                 "--methods", "semantic_consensus", "--seeds", "1", "--out", out)
    assert result.exit_code == 0, result.output
    run = {c: out / c / "semantic_consensus" / "seed-0" for c in
           ("adversaries.kind=random+adversaries.count=0", "adversaries.kind=echo+adversaries.count=0",
            "adversaries.kind=random+adversaries.count=1", "adversaries.kind=echo+adversaries.count=1")}
    summaries = {c: json.loads((p / "summary.json").read_text()) for c, p in run.items()}
    first = "adversaries.kind=random+adversaries.count=0"
    assert summaries["adversaries.kind=echo+adversaries.count=0"]["copied_from"] == str(run[first])
    round0 = [r for r in rows(run[first] / "metrics.jsonl") if r.get("round") == 0]
    for cell in ("adversaries.kind=random+adversaries.count=1", "adversaries.kind=echo+adversaries.count=1"):
        assert [r for r in rows(run[cell] / "metrics.jsonl") if r.get("round") == 0] == round0  # copied, not retrained
        assert summaries[cell]["attackers"] == ["math"]
    echoed = {r["text"] for r in rows(run["adversaries.kind=echo+adversaries.count=1"] / "uploads" / "round_01.jsonl")
              if r["client"] == "math"}
    assert echoed == {p["instruction"] for p in rows(run[first] / "public.jsonl")}
