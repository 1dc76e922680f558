"""The reports' figures (matplotlib): quality and label quality per round, bytes, seconds per phase, ablation axes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from semcon.rounds.rundir import PLOT_NAMES
from semcon.studies.report.numbers import PHASES, Runs, dig, per_round_mean, phase_seconds, round_bpb, seed_mean
from semcon.studies.stats import MIN_SEEDS, t_interval


def _seeds_word(runs: Runs) -> str:
    """How the plotted values are pooled over seeds: "one seed", or "mean over N seeds"."""
    n = max((len(per_seed) for per_seed in runs.values()), default=1)
    return "one seed" if n == 1 else f"mean over {n} seeds"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _round_axis(ax) -> None:
    """Whole rounds only on the x axis, also when the lines have one round."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    xs = sorted({float(x) for line in ax.lines for x in line.get_xdata()})
    if len(xs) == 1:
        ax.set_xlim(xs[0] - 1, xs[0] + 1)


def quality_figure(runs: Runs):
    """Held-out bits per byte per round, mean over clients, domains and seeds."""
    series = {m: xy for m, per_seed in runs.items() if (xy := per_round_mean(per_seed, round_bpb))[0]}
    if not series:
        return "no per-round reference scores in these runs (`eval.every_round: false`)"
    fig, ax = _plt().subplots(figsize=(6, 4))
    for method, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=method)
    ax.set(xlabel="round", ylabel=f"held-out bits per byte\n(mean over clients and domains; {_seeds_word(runs)})",
           title="quality per round (lower is better)")
    _round_axis(ax)
    ax.legend()
    return fig


def label_quality_figure(runs: Runs):
    """Pseudo-label quality per round against the held-back references: the consensus answer, a random
    client's answer (expected) and each client's own; ROUGE-L and cosine panels, mean over seeds."""
    methods = {m: ps for m, ps in runs.items() if any(r.get("answer_quality") for s in ps.values()
                                                         for r in s["per_round"])}
    if not methods:
        return "no pseudo-labels scored against references in these runs (no consensus round)"
    fig, axes = _plt().subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in zip(axes, ("rouge_l", "cosine"), ("ROUGE-L", "cosine"), strict=True):
        for method, per_seed in methods.items():
            prefix = f"{method}: " if len(methods) > 1 else ""
            clients = dict.fromkeys(c for s in per_seed.values() for r in s["per_round"]
                                    for c in (r.get("answer_quality") or {}).get("clients", {}))
            # the clients' own first and thin, the consensus last and thick: where it equals one client's answers
            # (that client supplied every label) both lines stay visible
            series = [*((f"{c} own", ("clients", c), ":", "x", 1.2) for c in clients),
                      ("random client", ("random",), "--", "s", 1.5), ("consensus", ("consensus",), "-", "o", 3.0)]
            for z, (name, keys, style, marker, width) in enumerate(series):
                xs, ys = per_round_mean(per_seed, lambda r, keys=keys, metric=metric:
                                        dig(r.get("answer_quality"), *keys, metric))
                if xs:
                    ax.plot(xs, ys, style, marker=marker, linewidth=width, markersize=3 + width, zorder=2 + z,
                            alpha=1.0 if name == "consensus" else 0.8, label=prefix + name)
        ax.set(xlabel="round", ylabel=f"{label} to the reference ({_seeds_word(methods)})", title=f"pseudo-labels: {label}")
        _round_axis(ax)
        ax.legend(fontsize="small")
    return fig


def bytes_figure(runs: Runs, adapter: int | None = None):
    """Cumulative bytes per round of each method's first seed (log scale). Without a FedAvg run, and with the
    fp32 ``adapter`` size, LoRA-FedAvg of the same adapters as a dashed analytic line: every client's adapter up
    and the average down, each communicating round."""
    series = {}
    for method, per_seed in runs.items():
        s = per_seed[min(per_seed)]
        total = np.cumsum([r["bytes_up"] + r["bytes_down"] for r in s["per_round"]])
        if len(total) and total[-1] > 0:
            series[method] = ([r["round"] for r in s["per_round"]], np.maximum(total, 1))
    if not series:
        return "no bytes moved in these runs (their methods never communicate)"
    fig, ax = _plt().subplots(figsize=(6, 4))
    for method, (rounds, total) in series.items():
        ax.plot(rounds, total, marker="o", label=method)
    if adapter and "fedavg" not in runs and "semantic_consensus" in series:
        s = runs["semantic_consensus"][min(runs["semantic_consensus"])]
        rounds = [r["round"] for r in s["per_round"]]
        per_round = [2 * adapter * len(s["clients"]) * (t > 0) for t in rounds]
        ax.plot(rounds, np.maximum(np.cumsum(per_round), 1), "--", marker="s",
                label="LoRA-FedAvg of the same adapters (analytic)")
    ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="cumulative bytes (up + down, all clients)", title="communication (first seed)")
    _round_axis(ax)
    ax.legend()
    return fig


def seconds_figure(runs: Runs):
    """A run's wall seconds by phase (``phase_seconds``), mean over seeds, one stacked bar per method."""
    fig, ax = _plt().subplots(figsize=(7, 4))
    bottom = np.zeros(len(runs))
    for phase, label in PHASES.items():
        values = np.array([seed_mean(ps, lambda s, p=phase: phase_seconds(s)[p]) for ps in runs.values()])
        ax.bar(list(runs), values, bottom=bottom, label=label)
        bottom += values
    ax.set(ylabel=f"seconds ({_seeds_word(runs)})", title="wall seconds per phase")
    ax.legend()
    return fig


PLOTS = dict(zip(PLOT_NAMES, (quality_figure, label_quality_figure, bytes_figure, seconds_figure), strict=True))


def make_plots(out: Path, runs: Runs, adapter: int | None = None) -> tuple[list[Path], dict[str, str]]:
    """The report's PNG plots in ``out``, and for each plot without data why it is absent (its file, left by an
    earlier report, is removed). ``adapter``: fp32 adapter bytes, for the bytes plot's analytic FedAvg line."""
    paths, absent = [], {}
    for name, figure in PLOTS.items():
        fig, path = (figure(runs, adapter) if figure is bytes_figure else figure(runs)), out / f"{name}.png"
        if isinstance(fig, str):
            absent[name] = fig
            path.unlink(missing_ok=True)
            continue
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        _plt().close(fig)
        paths.append(path)
    return paths, absent


def axis_plot(out: Path, axis: str, axes: dict[str, list[str]], record: list[dict],
               panels: list[tuple[str, str]]) -> Path | None:
    """Each panel's metric against one axis, one line per method and setting of the other axes (95% t-intervals
    from ``MIN_SEEDS`` seeds on)."""
    at = list(axes).index(axis)
    series: dict[str, dict[str, list[tuple[int, float, float]]]] = {key: {} for key, _ in panels}
    for r in record:
        if r.get("error"):
            continue
        rest = [o for i, o in enumerate(r["overrides"]) if i != at]
        x = axes[axis].index(r["overrides"][at].partition("=")[2])
        for key, _ in panels:
            if values := [v for v in r.get(key, []) if v is not None]:
                mean, half = t_interval(values)
                half = half if len(values) >= MIN_SEEDS else 0.0  # too few seeds to claim an interval
                series[key].setdefault(" ".join([r["method"], *rest]), []).append((x, mean, half))
    if not any(series.values()):
        return None
    plt = _plt()
    fig, axs = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axs[0], panels):
        for name, points in series[key].items():
            xs, ys, err = zip(*sorted(points))
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(axes[axis])), axes[axis])
        ax.set(xlabel=axis, ylabel=label, title=f"ablation: {axis}")
        if series[key]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    path = out / f"ablation_{re.sub(r'[^A-Za-z0-9._-]+', '_', axis)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
