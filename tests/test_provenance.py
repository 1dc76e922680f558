"""Provenance: the git commit (and uncommitted changes) of a checkout, and the report's line."""

import os
import subprocess
import sys

from semcon.provenance import describe, git_commit, provenance


def git(where, *args):
    subprocess.run(["git", "-C", str(where), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@x", "PATH": "/usr/bin:/bin"})


def test_commit_and_uncommitted_changes_of_a_checkout(tmp_path):
    assert git_commit(tmp_path) == (None, False)  # not a checkout: an installed package
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_commit(tmp_path) == (head, False)
    (tmp_path / "untracked.txt").write_text("not part of the code")
    assert git_commit(tmp_path) == (head, False)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == (head, True)


def test_the_report_line_names_version_commit_and_machine():
    p = provenance()
    assert p["semcon"] and p["torch"] and "CPUs" in p["machine"]
    line = describe({**p, "commit": "0123456789abcdef", "uncommitted_changes": True})
    assert "at commit `0123456` with uncommitted changes" in line and p["machine"] in line
    assert "no git commit (installed package)" in describe({**p, "commit": None})


def test_the_machine_names_the_instruction_set_of_torchs_kernels():
    """Runs on one box can differ in their floats by the kernels torch picks; a pin shows in the provenance."""
    pinned = subprocess.run([sys.executable, "-c", "from semcon.provenance import machine; print(machine())"],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}).stdout
    assert "torch DEFAULT)" in pinned
