"""``semcon ablate``: a compare in every cell of a grid of config overrides, then one table and a plot per axis.

Cells are ``DIR/<cell>/`` (each a compare directory: ``<cell>/<method>/seed-<S>/``). Finished cells are read,
not run again; a failed cell is reported with its reason and the others go on. A run that a finished run of the
same seed in ``DIR`` (this grid's or an earlier one's) already is, is copied; a semantic-consensus run that differs
from one only in the server's consensus settings starts from its round 0 and round-1 answers (``simulation.fork``),
since those do not depend on the rule, and one that differs also in what acts only on uploads (attacks, the upload
filter) from its round 0; another method's run that does not read these at all is copied from it.
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from semcon.config import ConfigError, RunConfig, config_key
from semcon.rounds.rundir import RunDir
from semcon.studies.compare import method_config, plan, run_compare, seed_plan, write_manifest
from semcon.studies.report import Runs, ablation_report, cell_title, write_report

log = logging.getLogger(__name__)
RunOne = Callable[[RunConfig, Path, bool], dict]  # run (or resume) one federation into a run directory


@dataclass
class Cell:
    """One point of the grid: its overrides, its folder, and what came of it."""

    name: str
    overrides: list[str]
    runs: Runs = field(default_factory=dict)
    cfgs: dict[str, RunConfig] = field(default_factory=dict)
    error: str | None = None


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``KEY=V1,V2,...`` axes (a value may be YAML: brackets keep a list together, e.g. ``[knn, gain]``)."""
    axes: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in re.split(r",(?![^\[]*\])", raw) if v.strip()]
        if not sep or not key.strip() or not values:
            raise ConfigError(f"--grid {item!r} is not KEY=V1,V2,...")
        if key.strip() in axes:
            raise ConfigError(f"--grid: {key.strip()!r} is given twice")
        axes[key.strip()] = values
    return axes


def value_name(value: str) -> str:
    """A grid value as it reads in a folder name: a list as its items (``[knn, gain]``: ``knn,gain``; ``[]``:
    ``none``), anything else with the characters a folder name cannot hold made ``_``."""
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        v = ",".join(x.strip().strip("'\"") for x in v[1:-1].split(",") if x.strip()) or "none"
    return re.sub(r"[^A-Za-z0-9._,-]+", "_", v).strip("_") or "_"


def cells_of(axes: dict[str, list[str]]) -> list[Cell]:
    """The cartesian product of the axes, in order, each named for its values (``key=value`` joined by ``+``)."""
    cells = []
    for values in itertools.product(*axes.values()):
        overrides = [f"{k}={v}" for k, v in zip(axes, values)]
        name = "+".join(f"{re.sub(r'[^A-Za-z0-9._-]+', '_', k)}={value_name(v)}" for k, v in zip(axes, values))
        cells.append(Cell(name, overrides))
    return cells


def ablate(config: Path, axes: dict[str, list[str]], out: Path, methods: list[str], sets: list[str],
           seeds: int | None, run_one: RunOne, fork: Callable[[Path, RunConfig, Path], dict]) -> list[Cell]:
    """Run every cell that has not finished (``run_one``, or ``fork`` from an earlier cell's run where only the
    server's consensus differs) and write ``out/ablation.md``, ``ablation.json`` and one plot per axis."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = cells_of(axes)
    for cell in cells:
        where = out / cell.name
        try:
            cfgs = {m: method_config(config, [*sets, *cell.overrides], m) for m in methods}
            runnable, skipped = plan(cfgs)
            if not runnable:
                raise ConfigError("; ".join(f"{m}: {why}" for m, why in skipped.items()))
            cell.cfgs = {m: cfgs[m] for m in runnable}
            plan_seeds = seed_plan(cfgs[methods[0]], runnable, seeds)
            where.mkdir(exist_ok=True)
            write_manifest(where, plan_seeds, skipped)

            def one(cfg: RunConfig, target: Path, resuming: bool) -> dict:
                if not resuming and (shared := _shared(cfg, finished_runs(out))) is not None:
                    summary = _reuse(shared[0], cfg, target, fork, copy=shared[1])
                else:
                    summary = run_one(cfg, target, resuming)
                return summary

            cell.runs = run_compare(where, cell.cfgs, plan_seeds, one, resume=True)
            write_report(where, cell.runs, cell.cfgs, skipped, title=cell_title(cell.name))
        except Exception as e:  # noqa: BLE001 - a failed cell is reported, the others go on
            cell.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("cell %s failed: %s", cell.name, cell.error)
    ablation_report(out, axes, cells)
    return cells


def finished_runs(out: Path) -> list[tuple[RunConfig, Path]]:
    """The finished runs of every cell already in ``out`` (``<cell>/<method>/seed-<S>/``), with their configs."""
    found = []
    for summary in sorted(Path(out).glob("*/*/seed-*/summary.json")):
        try:
            found.append((RunDir(summary.parent).config(), summary.parent))
        except ConfigError as e:
            log.warning("%s: not used for sharing (%s)", summary.parent, e)
    return found


def _shared(cfg: RunConfig, finished: list[tuple[RunConfig, Path]]) -> tuple[Path, bool] | None:
    """A finished run this one can copy (``True``: the same run, or another method's whose config differs only in
    what that method never reads) or, for semantic consensus, fork from (``False``: the same round 0, and the same
    round-1 answers where only the server's consensus differs: ``config_key``); the closest first."""
    same = [(other, path) for other, path in finished if other.method == cfg.method and other.seed == cfg.seed]
    if cfg.method != "semantic_consensus":  # the consensus and what acts on text uploads do not reach it
        return next(((path, True) for other, path in same
                     if config_key(other, "no answers") == config_key(cfg, "no answers")), None)
    for level in ("run", "answers", "round0"):
        for other, path in same:
            if config_key(other, level) == config_key(cfg, level) and (level == "run" or RunDir(path).can_fork()):
                return path, level == "run"
    return None


def _reuse(source: Path, cfg: RunConfig, target: Path, fork, copy: bool) -> dict:
    """Copy ``source`` (a finished run whose results this one would repeat; its config keeps this cell's
    settings), or fork this semantic-consensus run from it."""
    if not copy:
        return fork(source, cfg, target)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    copy = RunDir(target)
    copy.write_config(cfg)
    summary = copy.read_summary() | {"copied_from": str(source)}
    copy.summary(summary)
    log.info("%s: copied from %s (the same results)", target, source)
    return summary


