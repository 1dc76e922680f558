"""The command line: bad input is one line on stderr and exit code 2; a run reproduces from its config."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def semcon(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "semcon", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, needle", [
    (["run", "configs/demo.yaml", "--set", "train.stepz=1"], "train.stepz: unknown key"),
    (["run", "configs/demo.yaml", "--set", "rounds=two"], "rounds: Input should be a valid integer"),
    (["run", "configs/nope.yaml"], "config file not found"),
    (["run", "configs/demo.yaml", "--set", "clients.0.data={source: jsonl, path: missing.jsonl}"],
     "clients.0.data.path: file not found"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
    proc = semcon(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bad_jsonl_row_names_file_and_line(tmp_path):
    bad = tmp_path / "private.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c"}\n')
    proc = semcon("run", "configs/demo.yaml", "--set", f"clients.0.data={{source: jsonl, path: {bad}}}",
                  "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert f"{bad}:2" in proc.stderr and "response" in proc.stderr
