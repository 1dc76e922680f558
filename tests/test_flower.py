"""semcon on a real Flower deployment on 127.0.0.1: a SuperLink and SuperNodes as separate processes.

Each phase starts a ClientApp process per node (forked warm by forkexec.py), so these runs are short:
2 tiny clients, 1 round, and one deployment covers the failure, the resume and the results.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import flower_processes, rows, same_results

from semcon.rounds.rundir import RunDir, RunState

pytestmark = pytest.mark.flower


@pytest.fixture(scope="module")
def tree(flower_tree):
    return flower_tree


@pytest.fixture(scope="module")
def in_process(flower_reference):
    return flower_reference


def test_flower_run_config_maps_onto_the_config(tree, tmp_path):
    import tomllib

    from flwr.common.config import flatten_dict

    from semcon.config import load_config as load
    from semcon.transport.flower.launch import run_config_overrides, write_app

    RunDir.create(tmp_path, load(tree=tree))
    app = write_app(tmp_path)
    run_config = flatten_dict(tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    assert run_config["run-dir"] == str(tmp_path.resolve()) and run_config["train.steps"] == tree["train"]["steps"]
    run_config["train.steps"], run_config["public.num-prompts"] = 5, 3  # as `flwr run --run-config` would
    cfg = load(tmp_path / "config.yaml", run_config_overrides(run_config))
    assert (cfg.train.steps, cfg.public.num_prompts, cfg.rounds) == (5, 3, tree["rounds"])


@pytest.mark.long(250)
def test_flower_local_stops_below_quorum_and_resume_finishes_with_the_in_process_results(tree, in_process,
                                                                                          tmp_path):
    """`semcon flower local` on a real deployment: math's process dies mid-round, so with min_clients=2 the
    run stops and keeps round 0; `semcon resume` starts a new deployment (new Flower node ids) and finishes
    it with the in-process results."""
    config, out = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump({**tree, "min_clients": 2}))
    semcon = [sys.executable, "-m", "semcon"]
    died = subprocess.run([*semcon, "flower", "local", str(config), "--out", str(out)], capture_output=True,
                          text=True, timeout=400, env={**os.environ, "SEMCON_CLIENT_FAIL": "math:upload:1"})
    assert died.returncode != 0 and "min_clients=2" in died.stdout + died.stderr, died.stdout[-2000:]
    assert RunState.load(RunDir(out)).next_round == 1  # round 0 is kept
    assert not (out / "pseudo_labels" / "round_01.jsonl").exists()
    assert flower_processes(out / "flower") == []  # every process it started was stopped

    done = subprocess.run([*semcon, "resume", str(out)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    same_results(out, in_process, same_config=False)  # this run sets min_clients
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transport"] == "flower" and set(summary["eval_after"]) == {"geo", "math"}
    assert [r["round"] for r in rows(out / "metrics.jsonl") if r["event"] == "round"] == [0, 1]
    for i, name in enumerate(["geo", "math"]):  # each node kept its own adapter, keyed by the run id
        assert (out / "nodes" / f"node{i}" / RunDir(out).run_id / name / "round_01.safetensors").is_file()
    assert flower_processes(out / "flower") == []


@pytest.mark.parametrize("tls", [{"insecure": True, "root_certificates_path": None},
                                 {"insecure": False, "root_certificates_path": "/certs/ca.crt"}])
def test_warm_clientapps_get_the_command_line_flower_would_give_them(tls, monkeypatch):
    """forkexec runs ``flwr-clientapp``'s main in a fork with the arguments Flower's own executor passes."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    from semcon.transport.flower.forkexec import clientapp_args

    spec = ExecutionSpec(task_type=TaskType.CLIENT_APP, runtime_api_address="127.0.0.1:9094", token="t0k",
                         runtime_dependency_install=False, parent_pid=4242, suppress_output=False, task_id=7, **tls)
    started = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **kw: started.append(args))
    subprocess_executor.SubprocessExecutor().launch(spec)
    assert started == [["flwr-clientapp", *clientapp_args(spec)]]
