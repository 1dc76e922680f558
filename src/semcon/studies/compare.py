"""``semcon compare``: several methods on one setting, each over one or more seeds, then one report.

Run directories are ``OUT/<method>/seed-<S>/``. ``semcon.studies.report`` writes the report (intervals over seeds, paired
differences to ``local``, own vs other domains, bytes, time, plots); this module plans and runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from semcon.config import LOCAL_PLUS, METHODS, ConfigError, RunConfig, load_config, method_problem
from semcon.rounds.rundir import RunDir, RunDirError, finished_run, kind_of
from semcon.studies.report import Runs, cell_title, write_report

log = logging.getLogger(__name__)

# Quality metrics of the report, comparable across tokenizers (per-token NLL is not: it has its own table).


def plan(cfgs: dict[str, RunConfig]) -> tuple[list[str], dict[str, str]]:
    """Which methods can run on this setting, and why the others cannot."""
    runnable, skipped = [], {}
    for method, cfg in cfgs.items():
        if problem := method_problem(cfg):
            skipped[method] = problem
        else:
            runnable.append(method)
    return runnable, skipped


def seed_plan(cfg: RunConfig, methods: list[str], override: int | None = None) -> dict[str, list[int]]:
    """The seeds each method runs: ``seed, seed+1, ...`` for its count (``--seeds``, else the config's
    ``seeds``; a mapping that leaves a method out runs it once)."""
    counts = cfg.seeds if override is None else override
    seeds = {}
    for m in methods:
        n = counts if isinstance(counts, int) else counts.get(m, 1)
        if n < 1:
            raise ValueError(f"seeds: {m} needs at least 1 run, got {n}")
        seeds[m] = [cfg.seed + k for k in range(n)]
    return seeds


def run_dir(out: Path, method: str, seed: int) -> Path:
    """Where one method's run with one seed goes (always per seed, even with one)."""
    return Path(out) / method / f"seed-{seed}"


def run_compare(out: Path, cfgs: dict[str, RunConfig], seeds: dict[str, list[int]],
                run_one: Callable[[RunConfig, Path, bool], dict], resume: bool = False) -> Runs:
    """Every method's runs, seed by seed (so that an interrupted compare already holds paired runs of every
    method), with ``run_one(cfg, where, resuming)``; with ``resume``, finished runs are read, not run again."""
    runs: Runs = {}
    for seed, m in sorted(((s, method) for method in cfgs for s in seeds[method]), key=lambda pair: pair[0]):
        where = run_dir(out, m, seed)
        if resume and RunDir(where).finished():
            runs.setdefault(m, {})[seed] = RunDir(where).read_summary()
            continue
        resuming = resume and (where / "run_id").is_file()
        runs.setdefault(m, {})[seed] = run_one(cfgs[m].model_copy(update={"seed": seed}), where, resuming)
    return runs


def write_manifest(out: Path, seeds: dict[str, list[int]], skipped: dict[str, str]) -> None:
    """``compare.json``: the methods, the seeds each ran, and the methods skipped with the reason."""
    record = {"methods": list(seeds), "seeds": seeds, "skipped": skipped}
    (Path(out) / "compare.json").write_text(json.dumps(record, indent=2))


def rebuild_report(directory: Path) -> Path:
    """``report.md`` and the plots again, from the files of a finished run or of a compare's finished runs
    (nothing is recomputed): to restyle them, or after a change to the report. RunDirError if there is nothing."""
    directory = Path(directory)
    match kind_of(directory):
        case "run":
            cfg, summary = finished_run(directory)
            return write_report(directory, {cfg.method: {cfg.seed: summary}}, {cfg.method: cfg}, {},
                                title=f"semcon run `{cfg.name}` ({cfg.method}, seed {cfg.seed})")
        case "compare":
            manifest = json.loads((directory / "compare.json").read_text(encoding="utf-8"))
            runs, cfgs, missing = {}, {}, []
            for method, seeds in manifest["seeds"].items():
                for seed in seeds:
                    where = run_dir(directory, method, seed)
                    if not RunDir(where).finished():
                        missing.append(f"{method} seed {seed}")
                        continue
                    cfgs[method], runs.setdefault(method, {})[seed] = finished_run(where)
            if not runs:
                raise RunDirError(f"{directory}: none of the compare's runs has finished")
            if missing:
                log.warning("%s: not finished, left out of the report: %s", directory, ", ".join(missing))
            in_ablation = (directory.parent / "ablation.json").is_file()
            title = cell_title(directory.name) if in_ablation else "semcon compare"
            return write_report(directory, runs, cfgs, manifest.get("skipped", {}), title=title, missing=missing)
    raise RunDirError(f"{directory}: neither a semcon run nor a compare directory")


def parse_methods(text: str | None) -> list[str]:
    methods = list(METHODS) if not text else [m.strip() for m in text.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in (*METHODS, LOCAL_PLUS)]:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}, {LOCAL_PLUS}")
    return methods


def method_config(config: Path, sets: list[str], method: str) -> RunConfig:
    """The config of one method's runs: ``method=...`` over ``sets``; ``local+`` is local with as many extra
    private steps per round as the additive schedule's ``train.label_steps`` (the control for what labels carry)."""
    if method != LOCAL_PLUS:
        return load_config(config, [*sets, f"method={method}"])
    steps = load_config(config, sets).train.label_steps
    if not steps:
        raise ConfigError(f"{LOCAL_PLUS} adds train.label_steps private steps per round: set train.label_steps")
    return load_config(config, [*sets, "method=local", f"train.extra_steps={steps}"])
