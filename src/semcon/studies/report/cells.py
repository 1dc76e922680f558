"""Numbers as the text of a table cell: a mean over seeds with its interval (or its range below ``MIN_SEEDS``), a
seed-level difference, a budget; and markdown tables."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from semcon.studies.report.numbers import BASELINE, Runs, paired_differences, seed_scores, training_budget
from semcon.studies.stats import MIN_SEEDS, seed_level, t_interval


def arrow(before: float | None, after: float | None) -> str:
    return " -> ".join("–" if v is None else f"{v:.3f}" for v in (before, after))


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def difference_cell(diffs: dict[int, dict[str, float]], digits: int = 3) -> str:
    """A paired difference with the seed as the replicate (``stats.seed_level``): the mean of the seeds' client
    means with its t-interval over seeds and two-level bootstrap interval; with fewer than ``MIN_SEEDS`` seeds,
    each seed's value instead and no interval."""
    if not diffs:
        return "–"
    d = seed_level({seed: list(per.values()) for seed, per in diffs.items()})
    mean = f"{d['mean']:+.{digits}f}"
    if d["t"] is None:
        values = ", ".join(f"{v:+.{digits}f}" for v in d["seed_means"])
        return f"{mean} (seeds: {values}; no interval claimed with {len(d['seeds'])} < {MIN_SEEDS} seeds)"
    (tlo, thi), (blo, bhi) = d["t"], d["bootstrap"]
    return (f"{mean} t [{tlo:+.{digits}f}, {thi:+.{digits}f}] boot [{blo:+.{digits}f}, {bhi:+.{digits}f}] "
            f"({len(d['seeds'])} seeds)")


def over_seeds(per_seed: dict[int, dict], value: Callable[[dict], float | None], digits: int = 3) -> str:
    """Mean over seeds of ``value(summary)`` with its 95% t-interval from ``MIN_SEEDS`` seeds on, the seeds' range
    below that ("–" where no seed has it)."""
    values = [v for s in per_seed.values() if (v := value(s)) is not None]
    if not values:
        return "–"
    mean, half = t_interval(values)
    if len(values) < MIN_SEEDS:
        return f"{mean:.{digits}f}" + (f" ({min(values):.{digits}f}–{max(values):.{digits}f})" if len(values) > 1 else "")
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def client_spread(per_seed: dict[int, dict], metric: str, digits: int = 3) -> str:
    """Std over clients within each seed, averaged over seeds ("–" for a single model)."""
    stds = [np.std(list(sc.values())) for s in per_seed.values() if len(sc := seed_scores(s, metric)) > 1]
    return f"{np.mean(stds):.{digits}f}" if stds else "–"


def budget_cell(per_seed: dict[int, dict], which: int) -> str:
    """Mean over seeds and clients of the steps (0) or trained tokens (1) per client, with the clients' range."""
    values = [v[which] for s in per_seed.values() for v in training_budget(s).values()]
    if not values:
        return "–"
    mean, lo, hi = float(np.mean(values)), min(values), max(values)
    text = f"{mean:,.0f}"
    return text if lo == hi else f"{text} ({lo:,}–{hi:,})"


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def seeds_text(seeds: list[int]) -> str:
    return f"{len(seeds)} ({', '.join(map(str, seeds))})"


def cell_title(name: str) -> str:
    """The report title of an ablation's cell (written by ``semcon ablate``, and again by ``semcon report``)."""
    return f"semcon ablate cell `{name}`"


def share_text(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def paired(runs: Runs, method: str, metric: str = "bpb") -> str:
    if BASELINE not in runs or method == BASELINE:
        return "–"
    return difference_cell(paired_differences(runs, method, metric))
