"""Every method through the same checks (conformance), plus what is specific to each."""

import json

import pytest
import torch
from conftest import built_once, rows, tiny_tree
from safetensors.torch import save as save_tensors

from semcon.config import METHODS, ConfigError, load_config, method_problem
from semcon.coordinator.algorithms import FedAvg, average_states, make_algorithm
from semcon.protocol import AdapterUpdate
from semcon.rounds.rundir import RunDir, RunState
from semcon.transport import simulation
from semcon.transport.assembly import assemble


@pytest.fixture(scope="session")
def runs(tiny_llama_dir, tmp_path_factory, worker_id):
    """One tiny run per method on the same setting, built once for all workers."""
    configs = {m: load_config(tree=tiny_tree(str(tiny_llama_dir), method=m, eval={"every_round": True, "energy": True}))
               for m in METHODS}

    def build(root):
        for method, cfg in configs.items():
            simulation.run(cfg, root / method)

    root = built_once(tmp_path_factory, worker_id, "method-runs", build)
    return {m: (cfg, root / m, json.loads((root / m / "summary.json").read_text())) for m, cfg in configs.items()}


@pytest.mark.parametrize("method", METHODS)
def test_conformance(runs, method):
    cfg, path, summary = runs[method]
    assert summary["method"] == method
    for name in ("config.yaml", "metrics.jsonl", "ledger.jsonl", "summary.json"):
        assert (path / name).is_file()
    ledger = rows(path / "ledger.jsonl")
    assert summary["bytes_up"] == sum(r["encoded_bytes"] for r in ledger if r["direction"] == "up")
    assert summary["bytes_down"] == sum(r["encoded_bytes"] for r in ledger if r["direction"] == "down")
    for client in summary["clients"]:
        assert (path / "adapters" / client / "adapter_model.safetensors").is_file()
        assert set(summary["eval_after"][client]) == {"wiki:Geography", "gsm8k"}
    trained = [r for r in summary["per_round"] if r["train_loss"]]
    assert len(trained) == cfg.rounds + 1  # the same number of training phases for every method
    assert all(r["reference"] for r in summary["per_round"])
    assert summary["energy_method"]


@pytest.mark.parametrize("method, last", [("semantic_consensus", 0), ("local", 0), ("fedavg", 1)])
def test_the_schedule_ends_each_method_and_only_rounds_that_change_adapters_are_checkpointed(runs, method, last):
    """Parameter averaging adds one round that delivers the final average; the others end with their last
    training round, and no method saves an adapter after a round that changed nothing."""
    cfg, path, summary = runs[method]
    assert [r["round"] for r in summary["per_round"]] == list(range(cfg.rounds + 1 + last))
    assert RunState.load(RunDir(path)).next_round == cfg.rounds + 1 + last
    saved = {int(f.stem.split("_")[1]) for f in (path / "checkpoints" / "clients").glob("*/round_*.safetensors")}
    assert max(saved) == cfg.rounds + last


def test_budgets_match(runs):
    steps = {m: sum(len(r["train_tokens"]) for r in s["per_round"]) for m, (_, _, s) in runs.items()}
    assert steps["centralized"] == 1 * (runs["centralized"][0].rounds + 1)  # one model
    assert len({steps[m] for m in ("semantic_consensus", "fedavg", "fedprox", "local")}) == 1


def test_local_never_communicates(runs):
    _, path, summary = runs["local"]
    assert rows(path / "ledger.jsonl") == [] and summary["bytes_up"] == summary["bytes_down"] == 0


def test_centralized_sees_all_private_data(runs, tiny_llama_dir):
    from semcon.data import build_splits

    cfg, _, summary = runs["centralized"]
    assert summary["clients"] == ["centralized"]
    fed = assemble(cfg)
    pooled = {e.id for c in cfg.clients for e in build_splits(cfg).private[c.name]}
    assert {e.id for e in fed.clients[0].private} == pooled
    assert fed.clients[0].steps == cfg.train.steps * len(cfg.clients)


def test_fedavg_traffic_is_adapters_and_ends_with_an_average(runs):
    _, path, summary = runs["fedavg"]
    ledger = rows(path / "ledger.jsonl")
    assert {r["kind"] for r in ledger} == {"adapter", "config"}  # no public prompts: it answers none
    assert max(r["round"] for r in ledger) == runs["fedavg"][0].rounds + 1  # the final averaging
    from safetensors.torch import load_file

    states = [load_file(path / "adapters" / c / "adapter_model.safetensors") for c in summary["clients"]]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # every client holds the average
    sc = runs["semantic_consensus"][2]
    assert summary["bytes_up"] > 10 * sc["bytes_up"]


def test_average_of_identical_adapters_is_the_identity():
    s = {"a": torch.randn(3, 4), "b": torch.randn(4)}
    out = average_states([s, {k: v.clone() for k, v in s.items()}], [3, 7])
    assert all(torch.allclose(out[k], s[k]) for k in s)


def test_average_weights_follow_example_counts():
    x, y = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 4.0])}
    out = average_states([x, y], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([0.25, 3.0]))


def test_fedprox_mu_zero_is_fedavg_and_mu_pulls_toward_the_global(tiny_llama_dir):
    from semcon.config import LoraConfig
    from semcon.member.models import Backbone
    from semcon.member.train import tokenize, train_lora

    bb = Backbone.load(str(tiny_llama_dir), torch.float32, torch.device("cpu"))
    data, _ = tokenize(bb.fmt, [("What is 2+2?", "4", 1.0), ("Capital of France?", "Paris", 1.0)], 64)
    drift = {}
    for mu in (0.0, 1e-9, 100.0):
        bb.add_adapter(f"m{len(drift)}", LoraConfig(r=4), seed=0)
        name = f"m{len(drift)}"
        start = {k: v.clone() for k, v in bb.adapter_state(name).items()}
        with bb.active(name) as m:
            train_lora(m, bb.fmt, data, steps=5, batch_size=2, lr=5e-2, seed=0, device=bb.device, dtype=bb.dtype,
                       prox_mu=mu)
        end = bb.adapter_state(name)
        drift[mu] = sum(float((end[k] - start[k]).norm()) for k in start)
    assert drift[1e-9] == pytest.approx(drift[0.0], rel=1e-4)
    assert drift[100.0] < 0.5 * drift[0.0]
    assert FedAvg(1, ["a"], mu=0.0).name == "fedavg" and FedAvg(1, ["a"], mu=0.1).name == "fedprox"


def test_fedavg_rejects_bad_adapter_uploads():
    good = {"x": torch.ones(2, 2)}
    payloads = {
        "a": AdapterUpdate(1, "a", save_tensors(good), num_examples=4),
        "b": AdapterUpdate(1, "b", save_tensors({"y": torch.ones(2, 2)}), num_examples=4),
        "c": AdapterUpdate(1, "c", save_tensors({"x": torch.full((2, 2), float("nan"))}), num_examples=4),
        "d": AdapterUpdate(1, "d", b"junk", num_examples=4),
        "e": AdapterUpdate(2, "e", save_tensors(good), num_examples=4),
    }
    res = FedAvg(1, list(payloads)).aggregate(1, payloads)
    assert res.accepted == ["a"] and set(res.rejected) == {"b", "c", "d", "e"}
    assert "keys or shapes" in res.rejected["b"] and "non-finite" in res.rejected["c"]
    assert "do not parse" in res.rejected["d"] and "round 2" in res.rejected["e"]


@pytest.mark.parametrize("method", ["fedavg", "fedprox"])
def test_averaging_refuses_different_models(method, tiny_llama_dir):
    """The config is valid as it is; the method refuses it when it is built."""
    tree = tiny_tree(str(tiny_llama_dir), method=method)
    tree["clients"][1]["model"] = "gemma3-270m"
    cfg = load_config(tree=tree)
    with pytest.raises(ConfigError) as e:
        make_algorithm(cfg, [])
    assert f"{method} averages adapter weights" in str(e.value) and method_problem(cfg) == str(e.value)
    assert "geo=" in str(e.value) and "math=gemma3-270m" in str(e.value)
