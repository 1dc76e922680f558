"""The ``semcon`` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Federated fine-tuning of LLMs by semantic consensus: clients share answers, never weights.")
# Piped output (CI logs, files) gets wide tables rather than rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from semcon.provenance import git_commit

        commit, dirty = git_commit()
        where = f" (commit {commit[:7]}{', with uncommitted changes' if dirty else ''})" if commit else ""
        console.print(f"semcon {version('semcon')}{where}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                 help="print semcon's version and exit")] = False) -> None:
    """semcon: federated fine-tuning of LLMs by semantic consensus."""


Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an earlier semcon run or compare in "
                                         "--out (only semcon's own files are removed)")]
Log = Annotated[list[str] | None, typer.Option("--log", click_type=click.Choice(["tensorboard", "wandb"]),
                                              help="also show the metrics in tensorboard (RUN_DIR/tensorboard) or "
                                              "wandb (offline by default); repeatable")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging: every step semcon and its libraries "
                                       "log, and a failing client's traceback")]
Certs = Annotated[Path | None, typer.Option("--certs", help="the coordinator's folder from `semcon flower certs` "
                                            "(TLS, node keys, app-signing key, members.yaml): a closed deployment")]


def with_log(set_: list[str] | None, log: list[str] | None) -> list[str]:
    """The --set overrides plus the trackers of --log (the config's ``log``)."""
    return [*(set_ or []), *([f"log={json.dumps(log)}"] if log else [])]


def fail(message: str) -> None:
    """One line on stderr and exit code 2: the user's input is wrong, not the program."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _quiet_libraries() -> None:
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
    overwrite: Overwrite = False,
    log: Log = None,
    verbose: Verbose = False,
) -> None:
    """Run a federation in this process and write its run directory."""
    _setup_logging(verbose)
    cfg = _load_run_config(config, with_log(set_, log))
    _quiet_libraries()
    from semcon.studies.report import print_summary
    from semcon.rounds.rundir import default_out

    out = out or default_out(cfg)
    summary = _run_one(cfg, out, overwrite=overwrite)
    print_summary(summary, console)
    _outcome(out, summary)


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="YAML config (or a run directory's config.yaml)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set rounds=3 (repeatable)")] = None,
    verbose: Verbose = False,
) -> None:
    """Check a config without running it: resolve its models and data, split them as a run would, and print each
    client's rows and an estimate of the run's cost. Exit 2 with one line on any problem."""
    _setup_logging(verbose)
    cfg = _load_run_config(config, set_)
    _quiet_libraries()
    from semcon.data import DataError
    from semcon.studies.validate import describe, matmul_rate, plan

    try:
        found = plan(cfg)
    except (DataError, FileNotFoundError) as e:
        fail(str(e))
    console.print(Markdown("\n".join(describe(found, config, matmul_rate()))))
    console.print(f"[bold green]ok:[/] `semcon run {config}` will run this", highlight=False)


def _outcome(out: Path, summary: dict) -> None:
    """The end of a run: its outcome in a few lines, its report written, and where both are."""
    from semcon.studies.compare import rebuild_report
    from semcon.studies.report import outcome_lines

    console.print("\n".join(outcome_lines(out, summary)), markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: [bold]{rebuild_report(out)}[/]\nrun directory: [bold]{out}[/]")


def _load_run_config(config: Path, set_: list[str] | None):
    """The config, checked that its method can run on its clients; else one line and exit code 2."""
    from semcon.config import ConfigError, load_config, method_problem

    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as e:
        fail(str(e))
    if problem := method_problem(cfg):
        fail(f"{config}: {problem}")
    return cfg


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


def _claim(out: Path, overwrite: bool) -> None:
    """Check --out before any work: one line and exit code 2 if it cannot be used."""
    from semcon.rounds.rundir import RunDirError, claim

    try:
        claim(out, overwrite)
    except RunDirError as e:
        fail(str(e))


def _progress() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=err, transient=True)


def _run_one(cfg, out: Path, resume: bool = False, overwrite: bool = False) -> dict:
    """One federation with rich progress bars; bad data ends the command with exit code 2, a federation
    that cannot go on (too few clients) with exit code 1 and its state kept for `semcon resume`."""
    from semcon.config import ConfigError
    from semcon.data import DataError
    from semcon.rounds.federation import FederationError
    from semcon.rounds.rundir import RunDirError
    from semcon.transport.simulation import resume as resume_federation
    from semcon.transport.simulation import run as run_federation

    try:
        with _progress() as progress:
            return resume_federation(out, progress) if resume else run_federation(cfg, out, progress, overwrite)
    except (ConfigError, DataError, RunDirError, FileNotFoundError) as e:
        fail(str(e))
    except FederationError as e:
        err.print(f"[bold red]stopped:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="run directory of a crashed, killed or stopped run")],
    superlink: Annotated[str | None, typer.Option("--superlink", help="Flower runs: HOST:PORT of a running "
                                                  "SuperLink (default: the one it ran on; local runs start theirs again)")] = None,
    verbose: Verbose = False,
) -> None:
    """Continue a run from its last completed round, in-process or on Flower, with nothing lost or repeated."""
    from semcon.config import ConfigError
    from semcon.rounds.rundir import RunDir

    _setup_logging(verbose)
    try:
        cfg = RunDir(run_dir).config(check_files=True)
    except ConfigError as e:
        fail(str(e))
    _quiet_libraries()
    from semcon.studies.report import print_summary

    _check_resumable(run_dir)
    marker = run_dir / "flower.json"
    if marker.is_file():
        from semcon.transport.flower.launch import flwr_run, run_local, write_connection

        where = json.loads(marker.read_text(encoding="utf-8"))
        certs = Path(where["certs"]) if where.get("certs") else None
        if superlink is None and where.get("local"):
            summary = _flower_outcome(lambda: run_local(run_dir, len(cfg.clients), secure=certs is not None))
        else:
            home = run_dir / "flower"
            connection = write_connection(home, superlink or where["superlink"], certs / "ca.crt" if certs else None)
            summary = _flower_outcome(lambda: flwr_run(run_dir, home, connection, certs))
    else:
        summary = _run_one(cfg, run_dir, resume=True)
    print_summary(summary, console)
    _outcome(run_dir, summary)


def _check_resumable(run_dir: Path) -> None:
    """Read the checkpoint and the rows resume keeps before any work (on Flower, the ServerApp's process
    reads them), so that damage is one line naming the file."""
    from semcon.rounds.rundir import RunDir, RunDirError

    try:
        run = RunDir(run_dir)
        run.load_state()
        for name in ("ledger.jsonl", "metrics.jsonl"):
            run.rows(name)
    except (RunDirError, OSError) as e:
        fail(str(e))


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="YAML config of the setting")],
    methods: Annotated[str | None, typer.Option("--methods", help="comma-separated; default: all five")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, help="runs per method, seeds seed, seed+1, ... "
                                              "(default: the config's `seeds`)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, as for `semcon run`")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="directory for DIR/METHOD/seed-S/ and report.md")] = None,
    overwrite: Overwrite = False,
    resume_: Annotated[bool, typer.Option("--resume", help="continue an interrupted compare in --out: finished "
                                          "runs are kept, an interrupted one resumes, missing ones run")] = False,
    log: Log = None,
    verbose: Verbose = False,
) -> None:
    """Run several methods on one setting (same data, models, rounds, budget), each over its seeds, and
    write a report with intervals over seeds."""
    from semcon.config import ConfigError
    from semcon.studies.compare import method_config, parse_methods, plan, run_compare, seed_plan, write_manifest
    from semcon.studies.report import write_report

    _setup_logging(verbose)
    try:
        wanted = parse_methods(methods)
        cfgs = {m: method_config(config, with_log(set_, log), m) for m in wanted}
        runnable, skipped = plan(cfgs)
        seed_lists = seed_plan(cfgs[wanted[0]], runnable, seeds)
    except (ConfigError, ValueError) as e:
        fail(str(e))
    if not runnable:
        fail("; ".join(f"{m}: {why}" for m, why in skipped.items()))
    _quiet_libraries()
    if resume_:
        if out is None:
            fail("--resume needs the --out of the compare to continue")
        _check_same_plan(out, seed_lists)
    else:
        out = out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        _claim(out, overwrite)
        write_manifest(out, seed_lists, skipped)
    def one(cfg, where: Path, resuming: bool) -> dict:
        console.rule(f"[bold]{cfg.method}[/] seed {cfg.seed}")
        return _run_one(cfg, where, resume=resuming)

    runs = run_compare(out, {m: cfgs[m] for m in runnable}, seed_lists, one, resume_)
    report = write_report(out, runs, {m: cfgs[m] for m in runnable}, skipped)
    write_manifest(out, {m: sorted(per_seed) for m, per_seed in runs.items()}, skipped)
    console.print(Markdown(report.read_text(encoding="utf-8").split("## Plots")[0]))
    console.print(f"report: [bold]{report}[/]")


@app.command()
def ablate(
    config: Annotated[Path, typer.Argument(help="YAML config of the setting")],
    grid: Annotated[list[str], typer.Option("--grid", help="KEY=V1,V2,... (repeatable: the cells are the "
                                            "cartesian product), e.g. --grid consensus.rule=medoid,gated")],
    out: Annotated[Path, typer.Option("--out", help="DIR: DIR/CELL/ per cell, DIR/ablation.md")],
    methods: Annotated[str, typer.Option("--methods", help="comma-separated, in every cell")] = "semantic_consensus,local",
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, help="runs per method and cell (default: the "
                                              "config's `seeds`)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override for every cell, as for `semcon run`")] = None,
    verbose: Verbose = False,
) -> None:
    """Run a compare in every cell of a grid (finished cells are kept when run again; a failed cell is reported
    and the others go on) and write DIR/ablation.md with a plot per axis."""
    from semcon.config import ConfigError, load_config
    from semcon.studies.ablate import ablate as ablate_grid
    from semcon.studies.ablate import parse_grid
    from semcon.studies.compare import parse_methods

    _setup_logging(verbose)
    try:
        axes, wanted = parse_grid(grid), parse_methods(methods)
        load_config(config, set_ or [])
    except (ConfigError, ValueError) as e:
        fail(str(e))
    _quiet_libraries()
    from semcon.transport import simulation

    with _progress() as progress:
        def run_one(cfg, where: Path, resuming: bool) -> dict:
            console.rule(f"[bold]{where.parent.parent.name}[/]: {cfg.method} seed {cfg.seed}")
            return simulation.resume(where, progress) if resuming else simulation.run(cfg, where, progress)

        def fork(source: Path, cfg, where: Path) -> dict:
            console.rule(f"[bold]{where.parent.parent.name}[/]: {cfg.method} seed {cfg.seed}, from {source}")
            return simulation.fork(source, cfg, where, progress)

        cells = ablate_grid(config, axes, out, wanted, set_ or [], seeds, run_one, fork)
    for cell in cells:
        console.print(f"{cell.name}: {'failed: ' + cell.error if cell.error else 'done'}", highlight=False)
    console.print(f"ablation: [bold]{out / 'ablation.md'}[/]")


def _check_same_plan(out: Path, seeds: dict[str, list[int]]) -> None:
    """--resume continues only the compare it was given: the same methods and seeds, else one line and exit 2."""
    try:
        earlier = json.loads((out / "compare.json").read_text(encoding="utf-8"))["seeds"]
    except (OSError, ValueError, KeyError) as e:
        fail(f"{out}: no compare to resume ({e.__class__.__name__}: {e})")
    if earlier != seeds:
        fail(f"{out}: it ran methods and seeds {earlier}, this command asks for {seeds}; give the same --methods "
             "and --seeds")


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


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="a finished run directory, or a compare's --out")],
) -> None:
    """Write report.md and its plots again from a finished run's or compare's files, without recomputing."""
    from semcon.rounds.rundir import RunDirError
    from semcon.studies.compare import rebuild_report

    try:
        path = rebuild_report(directory)
    except RunDirError as e:
        fail(str(e))
    console.print(f"report: [bold]{path}[/]")


@app.command()
def verify(
    run_dir: Annotated[Path, typer.Argument(help="a semantic-consensus run directory")],
) -> None:
    """Recompute every round's pseudo-labels from the kept uploads with the run's config and embedder: exit 0
    when all match, 1 naming the first round and prompt (or upload) that differs."""
    _quiet_libraries()
    from semcon.rounds.rundir import RunDirError
    from semcon.studies.replay import verify as verify_run

    try:
        rounds, problem = verify_run(run_dir)
    except RunDirError as e:
        fail(str(e))
    if problem:
        err.print(f"[bold red]differs:[/] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"{run_dir}: the pseudo-labels of all {rounds} round(s) follow from the kept uploads", highlight=False)


@app.command()
def replay(
    run_dir: Annotated[Path, typer.Argument(help="a semantic-consensus run directory with kept uploads")],
    rule: Annotated[list[str], typer.Option("--rule", help="NAME[:key=value,...] with consensus keys, e.g. "
                                            "gated:gate=0.75,signal=knn (repeatable)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="consensus.KEY=V for every rule (repeatable)")] = None,
    attack: Annotated[list[str] | None, typer.Option("--attack", help="CLIENT[:kind=K,answers=constant]: replay "
                                                     "that client's uploads as an attacker's (kind default "
                                                     "inflate_competence; repeatable)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="folder for replay.md and replay.json "
                                             "(default RUN_DIR/replay)")] = None,
) -> None:
    """Recompute each round's consensus from the kept uploads under other rules, in seconds, and tabulate the
    labels: quality against the held-back references, expert share per domain, share labelled, share per client."""
    _quiet_libraries()
    from semcon.config import ConfigError
    from semcon.provenance import provenance
    from semcon.rounds.rundir import RunDirError
    from semcon.studies.replay import replay as replay_run
    from semcon.studies.report import replay_lines

    try:
        rows = replay_run(run_dir, rule, set_ or [], attack or [])
    except (RunDirError, ConfigError) as e:
        fail(str(e))
    out = out or run_dir / "replay"
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(replay_lines(rows, str(run_dir), provenance()))
    (out / "replay.md").write_text(text, encoding="utf-8")
    (out / "replay.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    console.print(Markdown(text))
    console.print(f"replay: [bold]{out / 'replay.md'}[/]")


@app.command()
def inspect(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    client: Annotated[str | None, typer.Option("--client", help="only this member")] = None,
    round_: Annotated[int | None, typer.Option("--round", help="only this round (0: the setup)")] = None,
) -> None:
    """What each member sent and received, round by round: every message with its bytes from the ledger, every
    answer uploaded with its flags, every pseudo-label received, and the numbers it reported."""
    from semcon.rounds.rundir import RunDirError
    from semcon.studies.inspection import describe, exchanges

    try:
        found = exchanges(run_dir, client, round_)
    except RunDirError as e:
        fail(str(e))
    for ex in found:
        console.print("\n".join(describe(ex)), markup=False, highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    directory: Annotated[Path, typer.Argument(help="a directory `semcon export` wrote: an adapter, or a merged model")],
    data: Annotated[Path, typer.Option("--data", help="your held-out rows: JSONL with instruction and response "
                                       "(or messages, or prompt and completion)")],
    model: Annotated[str | None, typer.Option("--model", help="the base model, where the model card does not "
                                              "name it")] = None,
    items: Annotated[int, typer.Option("--items", min=0, help="rows answered greedily for ROUGE-L, cosine and GSM8K "
                                       "match (0: bits per byte only)")] = 32,
) -> None:
    """Score an exported adapter on your own held-out data, beside its base model: bits per byte of the references,
    and the generation metrics of greedy answers, as semcon's own evaluation scores them."""
    _quiet_libraries()
    from semcon.data import DataError
    from semcon.studies.export import ExportError, evaluate_export

    try:
        found = evaluate_export(directory, data, model, items)
    except (ExportError, DataError, FileNotFoundError) as e:
        fail(str(e))
    for domain in next(iter(found.values())):
        metrics = list(next(iter(found.values()))[domain])
        lines = [f"| {data.name} | {' | '.join(found)} |", "|---|" + "---|" * len(found)]
        lines += [f"| {m} | {' | '.join(f'{per[domain][m]:.4f}' for per in found.values())} |" for m in metrics]
        console.print(Markdown("\n".join(lines)))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    out: Annotated[Path, typer.Option("--out", help="new directory: OUT/CLIENT/ for each client, or OUT itself "
                                      "with --client")],
    client: Annotated[str | None, typer.Option("--client", help="only this client's adapter")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="the base model with the adapter merged in (loads with "
                                        "AutoModelForCausalLM), instead of a PEFT adapter directory")] = False,
) -> None:
    """Write a run's adapters as PEFT adapter directories (or merged models) with a model card, for
    PeftModel.from_pretrained, lm-evaluation-harness and any PEFT-aware server."""
    _quiet_libraries()
    from semcon.studies.export import ExportError
    from semcon.studies.export import export as export_run

    try:
        written = export_run(run_dir, out, client, merge)
    except ExportError as e:
        fail(str(e))
    for path in written:
        console.print(f"{'merged model' if merge else 'adapter'}: [bold]{path}[/]")


flower_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown",
                         help="Run on Flower's deployment engine (SuperLink + SuperNodes).")
app.add_typer(flower_app, name="flower")


def _flower_outcome(summary_fn) -> dict:
    """The summary of a Flower run, or exit code 1 with the reason it stopped."""
    try:
        return summary_fn()
    except RuntimeError as e:
        err.print(f"[bold red]stopped:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _flower_config(config: Path, set_: list[str] | None):
    cfg = _load_run_config(config, set_)
    if cfg.method not in ("semantic_consensus", "fedavg", "fedprox", "local"):
        fail(f"method {cfg.method!r} has no Flower deployment (it pools the data in one place)")
    if cfg.method == "semantic_consensus" and cfg.consensus.oracle:
        fail(f"{config}: consensus.rule={cfg.consensus.rule} is a measurement bound (it reads the held-back "
             "references or who the experts are, which no deployment has): it has no Flower deployment")
    return cfg


def _create_run_dir(out: Path, cfg, overwrite: bool) -> None:
    from semcon.rounds.rundir import RunDir, RunDirError

    try:
        RunDir.create(out, cfg, overwrite)
    except RunDirError as e:
        fail(str(e))


@flower_app.command("local")
def flower_local(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, as for `semcon run`")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/NAME-TIME)")] = None,
    overwrite: Overwrite = False,
    secure: Annotated[bool, typer.Option("--secure", help="closed, as across machines: new keys in "
                                         "RUN_DIR/flower/certs, TLS, registered nodes, signed app")] = False,
    log: Log = None,
    verbose: Verbose = False,
) -> None:
    """Start a SuperLink and one SuperNode per client on 127.0.0.1, run the config, stop them all."""
    _setup_logging(verbose)
    cfg = _flower_config(config, with_log(set_, log))
    from semcon.studies.report import print_summary
    from semcon.transport.flower.launch import run_local
    from semcon.rounds.rundir import default_out

    out = out or default_out(cfg)
    _create_run_dir(out, cfg, overwrite)
    console.print(f"Flower run on 127.0.0.1: {len(cfg.clients)} SuperNodes; logs in {out / 'flower' / 'logs'}")
    print_summary(_flower_outcome(lambda: run_local(out, len(cfg.clients), secure=secure)), console)
    console.print(f"run directory: [bold]{out}[/]")


@flower_app.command("run")
def flower_run(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    superlink: Annotated[str, typer.Option("--superlink", help="HOST:PORT of the SuperLink's own API "
                                           "(with --certs: 127.0.0.1:PORT, as `semcon flower superlink` prints)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, as for `semcon run`")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory on this machine (the SuperLink's)")] = None,
    certs: Certs = None,
    overwrite: Overwrite = False,
    log: Log = None,
) -> None:
    """Run a config on a running SuperLink and its SuperNodes (from the SuperLink's machine, where the
    ServerApp writes the run directory). With --certs: TLS, the app signed by the coordinator's key, and
    each client pinned to its registered node (certs/members.yaml)."""
    _setup_logging(False)
    from semcon.studies.report import print_summary
    from semcon.transport.flower.launch import closed_settings, flwr_run, mark, write_connection
    from semcon.rounds.rundir import default_out

    if certs is not None:
        _check_certs(certs, "ca.crt", "signer", "members.yaml")
        set_ = [*(set_ or []), *(f"flower.{key}={value}" for key, value in closed_settings(certs).items())]
    cfg = _flower_config(config, with_log(set_, log))
    _check_members(cfg)
    out = out or default_out(cfg)
    _create_run_dir(out, cfg, overwrite)
    home = out / "flower"
    mark(out, superlink, certs=certs)
    connection = write_connection(home, superlink, certs / "ca.crt" if certs else None)
    print_summary(_flower_outcome(lambda: flwr_run(out, home, connection, certs)), console)
    console.print(f"run directory: [bold]{out}[/]")


def _check_certs(certs: Path, *names: str) -> None:
    for name in names:
        if not (certs / name).is_file():
            hint = "run `semcon flower register`" if name == "members.yaml" else "make it with `semcon flower certs`"
            fail(f"{certs / name}: not found ({hint})")


def _check_members(cfg) -> None:
    """The members file names a registered node for partitions of this run (one line if not)."""
    if cfg.flower.members is not None:
        from semcon.transport.flower.secure import load_members

        try:
            load_members(cfg.flower.members, [c.name for c in cfg.clients])
        except ValueError as e:
            fail(str(e))


@flower_app.command("certs")
def flower_certs(
    out: Annotated[Path, typer.Argument(help="folder for the keys (keep it on the coordinator)")],
    host: Annotated[str, typer.Option(help="the address SuperNodes dial (IP or DNS name)")] = "127.0.0.1",
    nodes: Annotated[int, typer.Option(min=1, help="one key pair per partition")] = 2,
) -> None:
    """Make every key a closed deployment needs: CA, SuperLink certificate, app-signing key, node keys, and
    per node a folder nodeN/ with only what that organisation gets."""
    from semcon.transport.flower.secure import make_certs

    if out.exists() and any(out.iterdir()):
        fail(f"{out} is not empty: keys are never overwritten; choose a new folder")
    make_certs(out, host, nodes)
    where = ", ".join(dict.fromkeys([host, "127.0.0.1", "localhost"]))  # the certificate's names, each once
    console.print(f"{out}: ca.crt, server.crt/.key (for {where}), signer (the coordinator's app-"
                  f"signing key), node0..node{nodes - 1}: give organisation N the folder {out}/nodeN", highlight=False)


@flower_app.command("superlink")
def flower_superlink(
    certs: Annotated[Path, typer.Option("--certs", help="the folder from `semcon flower certs`")],
    host: Annotated[str, typer.Option(help="address the SuperNodes' gateway listens on")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="the one public port: the Fleet-only gateway")] = 9092,
    api_port: Annotated[int, typer.Option(help="the SuperLink's own API, on 127.0.0.1 only")] = 9093,
    state: Annotated[Path, typer.Option(help="the SuperLink's database and logs")] = Path("semcon-superlink"),
) -> None:
    """Run a closed SuperLink until Ctrl-C: its API (runs, registration) on 127.0.0.1 only, TLS and node
    authentication, and a gateway on HOST:PORT that lets SuperNodes in and nothing else."""
    from semcon.transport.flower.launch import Processes

    _check_certs(certs, "ca.crt", "server.crt", "server.key", "signer")
    procs = Processes(home=state.resolve(), logs=state.resolve() / "logs", certs=certs.resolve())
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background, where SIGINT is ignored
        signal.signal(sig, _interrupt)
    try:
        procs.start_superlink(api_port, public=(host, port))
        console.print(f"SuperNodes connect to {host}:{port} (gateway, TLS); on this machine only: "
                      f"`semcon flower register --certs {certs} --superlink {procs.address}`, then "
                      f"`semcon flower run CONFIG --certs {certs} --superlink {procs.address}`. Ctrl-C stops.",
                      highlight=False)
        while procs.superlink.poll() is None and all(h.poll() is None for h in procs.helpers):
            time.sleep(1)
        fail(f"a SuperLink process stopped; see {procs.logs}")
    except KeyboardInterrupt:
        pass
    finally:
        procs.stop_all()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@flower_app.command("register")
def flower_register(
    certs: Annotated[Path, typer.Option("--certs", help="the folder from `semcon flower certs`")],
    superlink: Annotated[str, typer.Option("--superlink", help="the SuperLink's own API")] = "127.0.0.1:9093",
) -> None:
    """Register every node key of CERTS with the SuperLink and pin each partition to its node (members.yaml)."""
    from semcon.transport.flower.launch import flower_env, write_connection
    from semcon.transport.flower.secure import register_nodes

    _check_certs(certs, "ca.crt")
    home = certs / "flwr-home"
    connection = write_connection(home, superlink, certs / "ca.crt")
    try:
        pins = register_nodes(certs, home, connection, flower_env(home))
    except RuntimeError as e:
        fail(str(e))
    for partition, node in pins.items():
        console.print(f"partition {partition} -> node {node}", highlight=False)
    console.print(f"pins written to {certs / 'members.yaml'}")


def main() -> None:
    app()
