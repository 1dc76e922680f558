"""The command line: bad input is one line on stderr and exit code 2; a run reproduces from its config."""

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
