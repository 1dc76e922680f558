"""A tiny federation end to end in-process: the run directory, reproducibility, rejected uploads."""

import json

import pytest

from conftest import tiny_tree
from semcon import federation, simulation
from semcon.config import load_config
from semcon.client import Client
from semcon.protocol import Upload


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_run(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(tree=tiny_tree(str(tiny_llama_dir)))
    return cfg, out, simulation.run(cfg, out)


def test_run_directory_has_every_file(tiny_run):
    cfg, out, summary = tiny_run
    assert load_config(out / "config.yaml") == cfg
    ledger = read_jsonl(out / "ledger.jsonl")
    assert {(r["round"], r["client"], r["direction"]) for r in ledger} == {
        (1, "geo", "up"), (1, "math", "up"), (1, "geo", "down"), (1, "math", "down")}
    assert all(r["encoded_bytes"] > 0 and r["raw_bytes"] > 0 and r["kind"] in ("upload", "download") for r in ledger)
    labels = read_jsonl(out / "pseudo_labels" / "round_01.jsonl")
    assert labels and set(labels[0]) >= {"prompt_id", "prompt", "client", "text", "agreement"}
    metrics = read_jsonl(out / "metrics.jsonl")
    rounds = [m for m in metrics if m["event"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["pseudo_labels"] + rounds[1]["unlabelled"] == cfg.public.num_prompts
    assert {m["stage"] for m in metrics if m["event"] == "eval"} == {"before", "after"}
    assert summary["bytes_up"] == sum(r["encoded_bytes"] for r in ledger if r["direction"] == "up")
    for client in ("geo", "math"):
        assert (out / "adapters" / client / "adapter_model.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text())["clients"] == ["geo", "math"]


def test_same_seed_same_pseudo_labels(tiny_run, tmp_path):
    cfg, out, _ = tiny_run
    again = tmp_path / "again"
    simulation.run(load_config(out / "config.yaml"), again)
    assert (again / "pseudo_labels/round_01.jsonl").read_text() == (out / "pseudo_labels/round_01.jsonl").read_text()
    assert (again / "ledger.jsonl").read_text() == (out / "ledger.jsonl").read_text()


def test_a_client_uploading_garbage_is_rejected_and_the_run_goes_on(tiny_llama_dir, tmp_path, monkeypatch):
    real = Client.answer

    def tamper(self, round, prompts, on_batch=None):
        msg = real(self, round, prompts, on_batch)
        if self.name == "math":  # a client whose upload is for the wrong round
            msg = Upload(round=msg.round + 5, client=msg.client, answers=msg.answers, finished=msg.finished)
        return msg

    monkeypatch.setattr(Client, "answer", tamper)
    tree = tiny_tree(str(tiny_llama_dir), rounds=1, min_clients=1)
    summary = simulation.run(load_config(tree=tree), tmp_path)
    last = summary["per_round"][-1]
    assert "math" in last["rejected"] and last["accepted"] == ["geo"]
    labels = read_jsonl(tmp_path / "pseudo_labels" / "round_01.jsonl")
    assert {row["client"] for row in labels} <= {"geo"}


def test_modelled_transfer_time_by_hand():
    from semcon.config import NetworkConfig

    net = NetworkConfig(uplink_mbps=8, downlink_mbps=80, latency_ms=50)
    ledger = [{"direction": "up", "encoded_bytes": 1_000_000}, {"direction": "up", "encoded_bytes": 500_000},
              {"direction": "down", "encoded_bytes": 1_000_000}]
    # slowest upload: 0.05 s + 8e6 bit / 8e6 bit/s = 1.05 s; download: 0.05 + 8e6 / 8e7 = 0.15 s
    assert federation.modelled_transfer_s(ledger, net) == pytest.approx(1.2)
    assert federation.modelled_transfer_s([], net) == 0.0


def test_an_answer_longer_than_the_server_takes_is_cut_and_flagged_not_rejected(tiny_llama_dir):
    cfg = load_config(tree=tiny_tree(str(tiny_llama_dir), consensus={"max_answer_chars": 5}))
    fed = simulation.setup(cfg)
    up = fed.clients[0].answer(1, fed.prompts)
    assert all(len(t) <= 5 for t in up.answers.values())
    long = [pid for pid, t in up.answers.items() if len(t) == 5]
    assert long and not any(up.finished[pid] for pid in long)  # cut, so flagged: never a default candidate
    assert fed.algorithm.server.accept(1, fed.prompts, {fed.clients[0].name: up})[1] == {}  # accepted
