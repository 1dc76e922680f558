"""The ``semcon`` command line."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated fine-tuning of LLMs by semantic consensus: clients share answers, never weights.")
# Piped output (CI logs, files) gets wide tables rather than rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """semcon: federated fine-tuning of LLMs by semantic consensus."""


def fail(message: str) -> None:
    """One line on stderr and exit code 2: the user's input is wrong, not the program."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"Adapter name .* should not be contained in the prefix")
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config (or a run directory's config.yaml)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set rounds=3 (repeatable)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/NAME-TIME)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a semantic-consensus federation in this process and write its run directory."""
    from semcon.config import ConfigError, load_config
    from semcon.data import DataError

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])
    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as e:
        fail(str(e))
    _quiet_libraries()
    from semcon.report import print_summary
    from semcon.simulation import default_out, run as run_federation

    out = out or default_out(cfg)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            summary = run_federation(cfg, out, progress)
    except (DataError, FileNotFoundError) as e:
        fail(str(e))
    print_summary(summary, console)
    console.print(f"run directory: [bold]{out}[/]")


def main() -> None:
    app()
