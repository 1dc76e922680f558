"""The ``semcon`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markdown import Markdown
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

    _setup_logging(verbose)
    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as e:
        fail(str(e))
    _quiet_libraries()
    from semcon.report import print_summary
    from semcon.simulation import default_out

    out = out or default_out(cfg)
    summary = _run_one(cfg, out)
    print_summary(summary, console)
    console.print(f"run directory: [bold]{out}[/]")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


def _run_one(cfg, out: Path, resume: bool = False) -> dict:
    """One federation with rich progress bars; bad data ends the command with exit code 2, a federation
    that cannot go on (too few clients) with exit code 1 and its state kept for `semcon resume`."""
    from semcon.algorithms import FederationError
    from semcon.data import DataError
    from semcon.simulation import resume as resume_federation
    from semcon.simulation import run as run_federation

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            return resume_federation(out, progress) if resume else run_federation(cfg, out, progress)
    except (DataError, FileNotFoundError) as e:
        fail(str(e))
    except FederationError as e:
        err.print(f"[bold red]stopped:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="run directory of a crashed, killed or stopped run")],
    superlink: Annotated[str | None, typer.Option("--superlink", help="Flower runs: HOST:PORT of a running "
                                                  "SuperLink (default: the one it ran on; local runs start theirs again)")] = None,
    root_certificates: Annotated[Path | None, typer.Option(help="Flower runs: CA certificate for TLS")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Continue a run from its last completed round, in-process or on Flower, with nothing lost or repeated."""
    from semcon.config import ConfigError, load_config

    _setup_logging(verbose)
    try:
        cfg = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        fail(str(e))
    _quiet_libraries()
    from semcon.report import print_summary

    marker = run_dir / "flower.json"
    if marker.is_file():
        from semcon.flower.launch import flwr_run, run_local, write_connection

        where = json.loads(marker.read_text(encoding="utf-8"))
        if superlink is None and where.get("local"):
            summary = _flower_outcome(lambda: run_local(run_dir, len(cfg.clients)))
        else:
            home = run_dir / "flower"
            connection = write_connection(home, superlink or where["superlink"], root_certificates)
            summary = _flower_outcome(lambda: flwr_run(run_dir, home, connection))
    else:
        summary = _run_one(cfg, run_dir, resume=True)
    print_summary(summary, console)
    console.print(f"run directory: [bold]{run_dir}[/]")


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="YAML config of the setting")],
    methods: Annotated[str | None, typer.Option("--methods", help="comma-separated; default: all five")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, as for `semcon run`")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="directory for DIR/<method>/ and report.md")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run several methods on one setting (same data, models, rounds, budget) and write a report."""
    from semcon.compare import parse_methods, plan, write_report
    from semcon.config import ConfigError, load_config

    _setup_logging(verbose)
    try:
        wanted = parse_methods(methods)
        cfgs = {m: load_config(config, [*(set_ or []), f"method={m}"]) for m in wanted if m not in ("fedavg", "fedprox")}
        for m in ("fedavg", "fedprox"):
            if m in wanted:  # validated without the averaging check, so that it can be reported, not raised
                cfgs[m] = load_config(config, [*(set_ or []), "method=local"]).model_copy(update={"method": m})
        cfgs = {m: cfgs[m] for m in wanted}
    except (ConfigError, ValueError) as e:
        fail(str(e))
    runnable, skipped = plan(cfgs)
    if not runnable:
        fail("; ".join(f"{m}: {why}" for m, why in skipped.items()))
    _quiet_libraries()
    out = out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    summaries = {}
    for m in runnable:
        console.rule(f"[bold]{m}")
        summaries[m] = _run_one(cfgs[m], out / m)
    report = write_report(out, summaries, {m: cfgs[m] for m in runnable}, skipped)
    console.print(Markdown(report.read_text(encoding="utf-8").split("## Plots")[0]))
    console.print(f"report: [bold]{report}[/]")


@app.command()
def comm(
    models: Annotated[list[str] | None, typer.Argument(help="architecture names or config.json paths "
                                                       "(default: the built-in list)")] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank")] = 16,
    targets: Annotated[str, typer.Option(help="'all-linear' or comma-separated module names")] = "all-linear",
    dtype: Annotated[str, typer.Option(help="tensor dtype on the wire: fp32, fp16, bf16")] = "bf16",
    prompts: Annotated[int, typer.Option(help="public prompts per round")] = 1000,
    answer_bytes: Annotated[int, typer.Option(help="mean answer size in bytes")] = 400,
) -> None:
    """Analytic traffic per client per round: full FedAvg, LoRA-FedAvg and semantic consensus."""
    from rich.table import Table

    from semcon.comm import ARCHS, comm_report, human_bytes, resolve_arch

    try:
        archs = [resolve_arch(m) for m in models] if models else list(ARCHS.values())
        rows, assumptions = comm_report(archs, rank=rank, targets=targets, dtype=dtype, prompts=prompts,
                                        mean_answer_bytes=answer_bytes)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    table = Table(title=f"traffic per client per round (LoRA r={rank} on {targets}, {dtype}; "
                        f"{prompts} prompts x {answer_bytes} B)", title_justify="left")
    for col in ("model", "method", "up", "down", "x semcon (raw text)", "x semcon (encoded)"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for r in rows:
        table.add_row(r["model"], r["method"], human_bytes(r["up_bytes"]), human_bytes(r["down_bytes"]),
                      f"{r['x_semcon_raw']:,.1f}", f"{r['x_semcon_encoded']:,.1f}")
    console.print(table)
    console.print("[bold]assumptions[/]")
    for a in assumptions:
        console.print(f"- {a}", highlight=False)


flower_app = typer.Typer(no_args_is_help=True, help="Run on Flower's deployment engine (SuperLink + SuperNodes).")
app.add_typer(flower_app, name="flower")


def _flower_outcome(summary_fn) -> dict:
    """The summary of a Flower run, or exit code 1 with the reason it stopped."""
    try:
        return summary_fn()
    except RuntimeError as e:
        err.print(f"[bold red]stopped:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _flower_config(config: Path, set_: list[str] | None):
    from semcon.config import ConfigError, load_config

    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as e:
        fail(str(e))
    if cfg.method not in ("semantic_consensus", "fedavg", "fedprox", "local"):
        fail(f"method {cfg.method!r} has no Flower deployment (it pools the data in one place)")
    return cfg


@flower_app.command("local")
def flower_local(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, as for `semcon run`")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/NAME-TIME)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start a SuperLink and one SuperNode per client on 127.0.0.1, run the config, stop them all."""
    _setup_logging(verbose)
    cfg = _flower_config(config, set_)
    from semcon.flower.launch import run_local
    from semcon.report import print_summary
    from semcon.rundir import RunDir
    from semcon.simulation import default_out

    out = out or default_out(cfg)
    RunDir.create(out, cfg)
    console.print(f"Flower run on 127.0.0.1: {len(cfg.clients)} SuperNodes; logs in {out / 'flower' / 'logs'}")
    print_summary(_flower_outcome(lambda: run_local(out, len(cfg.clients))), console)
    console.print(f"run directory: [bold]{out}[/]")


@flower_app.command("run")
def flower_run(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    superlink: Annotated[str, typer.Option("--superlink", help="HOST:PORT of the SuperLink's API")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, as for `semcon run`")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory on this machine (the SuperLink's)")] = None,
    root_certificates: Annotated[Path | None, typer.Option(help="CA certificate for TLS (default: insecure)")] = None,
) -> None:
    """Run a config on a running SuperLink and its SuperNodes (from the SuperLink's machine, where the
    ServerApp writes the run directory)."""
    _setup_logging(False)
    from semcon.flower.launch import flwr_run, mark, write_connection
    from semcon.report import print_summary
    from semcon.rundir import RunDir
    from semcon.simulation import default_out

    cfg = _flower_config(config, set_)
    out = out or default_out(cfg)
    RunDir.create(out, cfg)
    home = out / "flower"
    mark(out, superlink)
    connection = write_connection(home, superlink, root_certificates)
    print_summary(_flower_outcome(lambda: flwr_run(out, home, connection)), console)
    console.print(f"run directory: [bold]{out}[/]")


def main() -> None:
    app()
