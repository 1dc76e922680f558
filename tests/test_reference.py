"""The documentation's generated references, and the site built with --strict (broken links fail)."""

import re
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


def test_generated_references_hold_no_html_a_browser_would_hide():
    """``<method>`` in a help text is text: escaped outside code spans, so the page shows it."""
    for text in (config_reference(), cli_reference()):
        outside = "".join(part for k, part in enumerate(text.split("`")) if k % 2 == 0)
        assert not re.findall(r"<[A-Za-z/!]", outside), re.findall(r"<[A-Za-z/!][^>]*>", outside)[:5]
    assert "&lt;method&gt;" in cli_reference() or "<method>" not in cli_reference()


def test_the_site_builds_strict_browses_from_disk_and_every_link_resolves(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    config = site / "reference" / "config.html"  # pages are files: links work from disk
    assert config.is_file() and "consensus.rule" in config.read_text()
    broken = []
    for page in site.rglob("*.html"):
        for href in re.findall(r'href="([^"]+)"', page.read_text(encoding="utf-8")):
            target = href.split("#")[0].split("?")[0]
            if not target or re.match(r"^[a-z]+:", target):
                continue
            if not ((site / target.lstrip("/")) if target.startswith("/") else (page.parent / target)).exists():
                broken.append(f"{page.relative_to(site)} -> {href}")
    assert not broken, broken[:10]
    # a report's links to run folders (files, not pages) go to the folders in the repository
    assert any("/tree/main/docs/results/study/runs/local/seed-0/" in p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    front = (site / "index.html").read_text(encoding="utf-8")
    assert "Which rule?" in front and "LoRA-FedAvg" in front and "<!-- which-rule -->" not in front
