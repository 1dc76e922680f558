"""The command line: bad input is one line on stderr and exit code 2; a run reproduces from its config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, one_line_error

ROOT = Path(__file__).resolve().parents[1]


def semcon(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "semcon", *args], capture_output=True, text=True, cwd=cwd)


def test_bad_input_is_one_line_on_stderr_and_exit_2_from_the_real_command():
    proc = semcon("run", "configs/demo.yaml", "--set", "train.stepz=1")
    assert proc.returncode == 2, proc.stderr
    assert "train.stepz: unknown key" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_flower_launcher_loads_no_model_stack(tmp_path):
    """`semcon flower local` reads and checks the config and claims --out without importing torch or
    transformers (about 9 CPU-s a process): the coordinator's launcher only starts and watches processes."""
    (tmp_path / "notes.txt").write_text("not a run")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "semcon", "flower", "local", "configs/demo.yaml",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "holds no semcon run" in proc.stderr, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "semcon.config" in imported and not imported & {"torch", "transformers", "peft"}


@pytest.mark.parametrize("args, needle", [  # in process: the same handler, without an interpreter start each
    (["run", "configs/demo.yaml", "--set", "rounds=two"], "rounds: Input should be a valid integer"),
    (["run", "configs/nope.yaml"], "config file not found"),
    (["run", "configs/demo.yaml", "--set", "clients.0.data={source: jsonl, path: missing.jsonl}"],
     "clients.0.data.path: file not found"),
])
def test_bad_input_exits_2_with_one_line(args, needle, monkeypatch):
    monkeypatch.chdir(ROOT)
    one_line_error(cli(*args), needle)


def test_bad_jsonl_row_names_file_and_line(tmp_path):
    bad = tmp_path / "private.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c"}\n')
    result = cli("run", ROOT / "configs/demo.yaml", "--set", f"clients.0.data={{source: jsonl, path: {bad}}}",
                 "--out", tmp_path / "run")
    one_line_error(result, f"{bad}:2")
    assert "response" in result.output


@pytest.mark.long(30)
def test_quick_config_runs_to_a_complete_directory_and_says_what_happened(tiny_llama_dir, tmp_path):
    """configs/quick.yaml (make quick) as it ships, on a tiny model: a full run directory, a report, and the
    outcome a newcomer wants (bits per byte before -> after, example labels, bytes against LoRA-FedAvg)."""
    import yaml

    from semcon.config import load_config

    tree = yaml.safe_load((ROOT / "configs/quick.yaml").read_text())
    assert load_config(ROOT / "configs/quick.yaml").rounds == 1 and len({c["data"]["source"] for c in tree["clients"]}) >= 2
    for client in tree["clients"]:
        client["model"] = str(tiny_llama_dir)
    tree["threads"] = 1
    config, out = tmp_path / "quick.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(tree))
    result = cli("run", config, "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "summary.json", "ledger.jsonl", "uploads/round_01.jsonl", "pseudo_labels/round_01.jsonl",
                 "report.md", "bytes_per_round.png", "adapters/chat/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    lines = result.output.splitlines()
    bpb = lines[lines.index("held-out bits per byte, base model -> after (lower is better):") + 1:][:2]
    assert [line.split()[0] for line in bpb] == ["medicine", "chat"] and all(" -> " in line for line in bpb)
    assert all("–" not in line for line in bpb)  # eval.before is on: every number before and after is there
    labels = [line for line in lines if line.startswith("  [")]
    assert 1 <= len(labels) <= 3 and all(line[3:].split("]")[0] in ("medicine", "chat") for line in labels)
    assert "LoRA-FedAvg of these adapters" in result.output and f"run directory: {out}" in result.output


def test_arguments_keep_their_help():
    """typer 0.20 on click 8.5 printed arguments without their help: requirements.txt pins click below it."""
    result = cli("inspect", "--help")
    assert result.exit_code == 0 and "a run directory" in result.output


GUARD = '''import socket, os
def _refuse(self, address, *a, **k):
    with open(os.environ["SEMCON_SOCKET_LOG"], "a") as f:
        f.write(repr(address) + "\\n")
    raise OSError("network refused by the test's socket guard")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
'''


def test_a_bad_model_is_one_line_at_load_and_no_network_call_offline(tmp_path):
    """The real command, with every socket connection refused and logged: offline by default, a client's model
    is checked at config load (before any data is read) and nothing tries the hub."""
    model = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (tmp_path / "sitecustomize.py").write_text(GUARD)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")]), "SEMCON_SOCKET_LOG": str(tmp_path / "log")}
    proc = subprocess.run([sys.executable, "-m", "semcon", "run", "configs/demo.yaml", "--set", f"clients.1.model={model}",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "clients.1.model (client 'medicine')" in proc.stderr and "Traceback" not in proc.stderr
    assert "not in the local cache while the hub is offline" in proc.stderr
    assert not (tmp_path / "log").exists(), (tmp_path / "log").read_text()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model, needle", [("smollm2-360m", "did you mean smollm2-135m?"),
                                           ("./no/such/dir", "is not an embedded name")])
def test_a_mistyped_model_names_the_client_and_what_is_accepted(model, needle, monkeypatch):
    monkeypatch.chdir(ROOT)
    one_line_error(cli("run", "configs/demo.yaml", "--set", f"clients.1.model={model}"), needle)


def test_a_bad_set_value_blames_the_set_not_the_file(monkeypatch):
    monkeypatch.chdir(ROOT)
    one_line_error(cli("run", "configs/demo.yaml", "--set", "rounds=two"), "--set rounds=two: rounds: Input should be")
    one_line_error(cli("run", "configs/demo.yaml", "--set", "clients.0.model=nope"), "clients.0.model (client 'geography')")


def test_version_verbose_and_log_say_what_they_are():
    from importlib.metadata import version

    result = cli("--version")
    assert result.exit_code == 0 and result.output.startswith(f"semcon {version('semcon')}")
    helped = cli("run", "--help").output
    assert "debug logging" in helped and "tensorboard|wandb" in helped
    assert cli("run", "configs/demo.yaml", "--log", "mlflow").exit_code == 2


def test_a_run_that_stopped_before_its_first_round_leaves_a_folder_the_same_command_reuses(tmp_path):
    from semcon.config import load_config
    from semcon.rounds.rundir import RunDir, RunDirError, claim

    out = tmp_path / "run"
    RunDir.create(out, load_config(ROOT / "configs/demo.yaml"))  # as a run that failed on its data would leave it
    assert claim(out) == out and not (out / "config.yaml").exists()
    RunDir.create(out, load_config(ROOT / "configs/demo.yaml"))
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "state.json").write_text("{}")  # a completed round: worth keeping
    with pytest.raises(RunDirError, match="pass --overwrite"):
        claim(out)
