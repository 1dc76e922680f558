"""The documentation's generated references, and the site built with --strict (broken links fail)."""

import subprocess
import sys
import typing
from pathlib import Path

import typer

from semcon.cli import app
from semcon.reference import cli_reference, config_reference, config_sections

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_is_in_the_reference_with_a_description():
    from pydantic import BaseModel

    from semcon.config import RunConfig

    def reachable(model, found):
        found.add(model)
        for info in model.model_fields.values():
            for sub in _models(info.annotation):
                if sub not in found:
                    reachable(sub, found)
        return found

    def _models(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for a in typing.get_args(annotation) for m in _models(a)]

    text, sections = config_reference(), config_sections()
    assert {m for _, m, _ in sections} == reachable(RunConfig, set())
    assert [p for p, _, _ in sections][:2] == ["", "clients[]"] and "consensus" in [p for p, _, _ in sections]
    for path, model, _ in sections:
        heading = f"## `{path}`" if path else "## top level"
        table = text.split(heading + "\n")[1].split("\n## ")[0]
        for name in model.model_fields:
            row = next((line for line in table.splitlines() if line.startswith(f"| `{name}` |")), None)
            assert row is not None, f"{path}.{name} is not in the reference"
            assert row.split(" | ")[3].strip(" |"), f"{path}.{name} has no description"


def test_every_command_and_option_is_in_the_cli_reference():
    import click

    text = cli_reference()
    root = typer.main.get_command(app)
    ctx = click.Context(root)
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        subs = command.list_commands(ctx) if isinstance(command, click.Group) else [None]
        for sub in subs:
            cmd = command.get_command(ctx, sub) if sub else command
            section = text.split(f"## `semcon {name}{' ' + sub if sub else ''}`")[1].split("\n## ")[0]
            for p in cmd.params:
                if p.name != "help":
                    assert (p.opts[0] if isinstance(p, click.Option) else p.human_readable_name) in section, (name, p.name)
    assert "| `RUN_DIR` | path | required | a run directory |" in text  # arguments' help, from the signatures


def test_the_site_builds_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    assert "consensus.rule" in (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
