"""The third study's tables and figure (docs/results/study3/): every run of configs/study3.yaml that has finished,
paired with local on the seed (the replicate), and the budget curve: the paired gain over local against the bytes
moved. Folders that have not run yet are left out and named.

    python scripts/study3_table.py [RUNS_DIR [FIGURE]] > docs/results/study3/summary.md     (RUNS_DIR: runs/study3)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from semcon.comm import human_bytes
from semcon.provenance import describe, provenance
from semcon.studies.report import budget_cell, difference_cell, mean_expert_share, over_seeds, own_other, paired_differences
from semcon.studies.report.cells import md_table
from semcon.studies.report.numbers import client_mean
from semcon.studies.stats import MIN_SEEDS, budget_to_reach, budget_trend, t_interval

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study3")
FIGURE = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "budget_curve.png"
# label, folder of seed-N runs, public prompts answered a round (None: none), whether it is a bound. local+ has the
# gated runs' total steps (6 extra a round over rounds 0-3 = 8 label steps x rounds 1-3, `--set train.label_steps=6`);
# local+ (256) those of the runs at 256 a round (24 x 4 = 32 label steps x 3, `--set train.label_steps=24`).
ROWS = [
    ("local", "gain/local", None, False),
    ("local+ (as many extra private steps)", "gain-plus/local+", None, False),
    ("local+ (256): as many as at 256 a round", "plus-256/local+", None, False),
    ("gated on knn, 64 a round", "gain/semantic_consensus", 64, False),
    ("medoid, 64 a round", "medoid/semantic_consensus", 64, False),
    ("gated on knn, 256 a round (fresh)", "gated-256/semantic_consensus", 256, False),
    ("oracle_expert, 256 a round (a bound)", "expert-256/semantic_consensus", 256, True),
    ("oracle_reference, 64 a round (a bound)", "reference-64/semantic_consensus", 64, True),
    ("oracle_reference, 192 a round (a bound)", "reference-192/semantic_consensus", 192, True),
    ("oracle_reference, 576 a round (a bound)", "reference-576/semantic_consensus", 576, True),
    ("FedAvg", "fedavg/fedavg", None, False),
]
# The control with as many optimizer steps as the runs at a budget (label steps: one pass over a round's labels):
# its short name and its row.
CONTROLS = {64: ("local+", ROWS[1][0]), 256: ("local+ (256)", ROWS[2][0])}
METRICS = (("bpb", "bits/byte ↓"), ("bpb_plain", "plain ↓"), ("rouge_l", "ROUGE-L ↑"), ("exact_match", "GSM8K EM ↑"),
           ("accuracy", "MMLU acc ↑"))


def runs_in(folder: Path) -> dict[int, dict]:
    return {int(p.parent.name.removeprefix("seed-")): json.loads(p.read_text())
            for p in sorted(folder.glob("seed-*/summary.json"))}


def metric_of(metric: str):
    return lambda s: client_mean(s, metric)


def wall_range(runs: dict[int, dict]) -> str:
    seconds = [s["seconds"] for s in runs.values()]
    return f"{min(seconds):,.0f}" + (f"–{max(seconds):,.0f}" if len(seconds) > 1 else "")


def total_bytes(s: dict) -> float:
    return s["bytes_up"] + s["bytes_down"]


def mean_bytes(runs: dict[int, dict]) -> float:
    """Bytes moved by all clients in a run, mean over its seeds."""
    return float(np.mean([total_bytes(s) for s in runs.values()]))


def main() -> None:
    found = {label: (runs_in(ROOT / folder), budget, bound) for label, folder, budget, bound in ROWS}
    missing = [label for label, (runs, _, _) in found.items() if not runs]
    found = {label: row for label, row in found.items() if row[0]}
    if not found:
        print(f"No run of the study has finished yet (in `{ROOT}`): {'; '.join(missing)}.")
        return
    local = found.get("local", ({}, None, False))[0]
    # Each control with the runs that have its step count: what the labels do beyond their extra steps.
    controls = [(name, found[row][0], {label: runs for label, (runs, budget, _) in found.items() if budget == b})
                for b, (name, row) in CONTROLS.items() if row in found]
    commits = sorted({s.get("provenance", {}).get("commit", "?")[:7] for runs, _, _ in found.values() for s in runs.values()})
    print(f"Tabulated by `python scripts/study3_table.py` with {describe(provenance())}, from the runs' summary.json "
          f"files (they ran at commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)}).\n")
    print(f"The seed is the replicate. Quality: held-out, client mean over the four domains, mean over seeds with the "
          f"95% t-interval from {MIN_SEEDS} seeds on (fewer: the seeds' range). '− local' and '− local+': per seed the "
          "mean over clients of the paired difference, then the mean over seeds with its t-interval over seeds and "
          f"two-level bootstrap (`boot`), from {MIN_SEEDS} seeds on; fewer: every seed's value and no interval. "
          "Bits per byte: lower is better; `plain`: without GSM8K's calculator annotations.")
    runs_of = {label: runs for label, (runs, _, _) in found.items()}
    quality_table(runs_of)
    if local:
        paired_table({label: runs for label, runs in runs_of.items() if label != "local"}, local, "local")
    for name, control, same_steps in controls:
        if same_steps:
            paired_table(same_steps, control, name, ", the rules with as many optimizer steps")
    cost_table(runs_of)
    if missing:
        print(f"\nNot run yet: {'; '.join(missing)}.")
    if local:
        per_client_table(runs_of, local)
        domain_table(runs_of, local)
        for name, control, same_steps in controls:
            if same_steps:
                per_client_table(same_steps, control, name)
                domain_table(same_steps, control, name)
        label_table({label: runs for label, (runs, budget, _) in found.items() if budget})
        figure(found, local, {name: control for name, control, _ in controls})
        print(f"\n![paired gain over local against bytes moved]({FIGURE.name})")
        trend_text(found, local)


def table(title: str, head: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n\n" + "\n".join(md_table(head, rows)))


def quality_table(runs_of: dict[str, dict]) -> None:
    table("**Quality**, held-out, client mean (own: each client's own domain; other: the mean of the other three):",
          ["run", "seeds", *(name for _, name in METRICS), "own bits/byte ↓", "other ↓", "expert share"],
          [[label, str(len(runs)), *(over_seeds(runs, metric_of(k)) for k, _ in METRICS),
            over_seeds(runs, lambda s: own_other(s, "bpb")[0]), over_seeds(runs, lambda s: own_other(s, "bpb")[1]),
            over_seeds(runs, mean_expert_share, 2)] for label, runs in runs_of.items()])


def paired_table(runs_of: dict[str, dict], baseline: dict, name: str, why: str = "") -> None:
    """(run − baseline) on the same seed for every metric, one row per run in ``runs_of``."""
    table(f"**Paired with {name}** on the same seed (run − {name}{why}; bits per byte: below 0 is better, the task "
          "metrics: above 0 is better):",
          ["run", *(f"− {name}, {title}" for _, title in METRICS)],
          [[label, *(difference_cell(paired_differences({"local": baseline, "x": runs}, "x", metric))
                     for metric, _ in METRICS)] for label, runs in runs_of.items()])


def cost_table(runs_of: dict[str, dict]) -> None:
    table("**What it cost**, per client over the whole run (optimizer steps, trained tokens), the bytes moved by all "
          "clients, and the wall time of each seed's run (its range over seeds; it includes other work on the box, "
          "see the README):",
          ["run", "steps / client", "tokens / client", "bytes", "wall s"],
          [[label, budget_cell(runs, 0), budget_cell(runs, 1), human_bytes(mean_bytes(runs)),
            wall_range(runs)] for label, runs in runs_of.items()])


def per_client_table(runs_of: dict[str, dict], base: dict, name: str = "local") -> None:
    seeds = sorted(base)
    rows = []
    for label, runs in runs_of.items():
        if label == "local":
            continue
        diffs = paired_differences({"local": base, "x": runs}, "x", "bpb")
        rows += [[label, c, *(f"{diffs[s][c]:+.3f}" if c in diffs.get(s, {}) else "–" for s in seeds)]
                 for c in dict.fromkeys(c for per in diffs.values() for c in per)]
    table(f"Per client, (run − {name}) in bits per byte, seed by seed:",
          ["run", "client", *(f"seed {s}" for s in seeds)], rows)


def domain_table(runs_of: dict[str, dict], base: dict, name: str = "local") -> None:
    domains = list((next(iter(base.values())).get("own_domain") or {}).items())
    table(f"By evaluation domain, (run − {name}) in bits per byte, mean over seeds (± the 95% t half-width from "
          f"{MIN_SEEDS} seeds on): the domain's expert (the client that holds it) and the mean of the other three "
          "clients (under a consensus rule they see that domain only through its labels):",
          ["run", *(f"{d}: expert / others" for _, d in domains)],
          [[label, *(domain_cell(runs, base, client, domain) for client, domain in domains)]
           for label, runs in runs_of.items() if label != "local"])


def label_table(label_runs: dict[str, dict]) -> None:
    rounds = sorted({r["round"] for runs in label_runs.values() for s in runs.values() for r in s["per_round"]
                     if r.get("answer_quality")})
    if rounds:
        table("The labels round by round: ROUGE-L against the held-back references of the consensus labels / a random "
              "client's answer on the same prompts / the best single client's answers, mean over seeds:",
              ["run", *(f"round {r}" for r in rounds)],
              [[label, *(label_cell(runs, r) for r in rounds)] for label, runs in label_runs.items()])


def domain_cell(runs: dict[int, dict], local: dict[int, dict], expert: str, domain: str) -> str:
    """(run − local) bits per byte on one evaluation domain: its expert's, then the other clients' mean."""
    def change(s: int, clients: list[str]) -> float:
        return float(np.mean([runs[s]["eval_after"][c][domain]["bpb"] - local[s]["eval_after"][c][domain]["bpb"]
                              for c in clients]))

    seeds = [s for s in sorted(runs) if s in local]
    others = [c for c in local[seeds[0]]["eval_after"] if c != expert] if seeds else []
    cells = []
    for clients in ([expert], others):
        mean, half = t_interval([change(s, clients) for s in seeds])
        cells.append(f"{mean:+.3f}" + (f" ± {half:.3f}" if len(seeds) >= MIN_SEEDS else ""))
    return " / ".join(cells) if seeds else "–"


def label_cell(runs: dict[int, dict], round_: int) -> str:
    """Consensus / random client / best client ROUGE-L of one round's labels, mean over seeds."""
    rows = [q for s in runs.values() for r in s["per_round"] if r["round"] == round_ and (q := r.get("answer_quality"))]
    if not rows:
        return "–"
    best = [max(c["rouge_l"] for c in q["clients"].values()) if q.get("clients") else np.nan for q in rows]
    cells = ([(q.get("consensus") or {}).get("rouge_l", np.nan) for q in rows],
             [(q.get("random") or {}).get("rouge_l", np.nan) for q in rows], best)
    return " / ".join("–" if np.isnan(v).all() else f"{np.nanmean(v):.3f}" for v in map(np.asarray, cells))


def trend_text(found: dict, local: dict) -> None:
    """Where each rule's budget trend meets FedAvg's gain over local, if it does: an extrapolation, said as one."""
    fedavg = found.get("FedAvg", ({}, None, False))[0]
    families: dict[str, list[tuple[int, float, float]]] = {}
    for label, (runs, budget, _) in found.items():
        if budget:
            families.setdefault(label.split(",")[0], []).append(
                (budget, mean_bytes(runs), gain(runs, local, metric_of("bpb"))[0]))
    lines = []
    target = gain(fedavg, local, metric_of("bpb"))[0] if fedavg else None
    fedavg_bytes = mean_bytes(fedavg) if fedavg else None
    for family, points in families.items():
        fit = budget_trend([m for m, _, _ in points], [g for _, _, g in points])
        if fit is None:
            continue
        a, b = fit
        per_prompt = float(np.mean([moved / m for m, moved, _ in points]))
        text = (f"- {family}: gain over local ≈ {a:+.3f} − {b:.3f}/√m bits per byte, fitted to "
                f"{len({m for m, _, _ in points})} budgets ({', '.join(str(m) for m, _, _ in sorted(points))} a round)")
        if target is not None:
            m = budget_to_reach(a, b, target)
            text += (f"; on this trend no budget reaches FedAvg's gain ({target:+.3f}): "
                     + (f"its ceiling ({a:+.3f}) is not above it" if a <= target else "it does not rise with the budget")
                     if m is None else
                     f"; it would reach FedAvg's gain ({target:+.3f}) at about {m:,.0f} prompts a round, "
                     f"{human_bytes(m * per_prompt)} moved against FedAvg's {human_bytes(fedavg_bytes)}")
        lines.append(text + ".")
    if lines:
        print("\nThe budget trend (an extrapolation from a few budgets and seeds, not a measurement; m: prompts a "
              "round):\n\n" + "\n".join(lines))


def gain(runs: dict[int, dict], local: dict[int, dict], value) -> tuple[float, float]:
    """Mean over the seeds both ran of value(local) − value(run) (positive: better than local), and the t
    half-width (0 below ``MIN_SEEDS`` seeds: no interval claimed). Over the same clients, the client mean of the
    paired differences is the difference of the client means."""
    per_seed = [value(local[s]) - value(runs[s]) for s in sorted(runs) if s in local]
    mean, half = t_interval(per_seed)
    return mean, (half or 0.0) if len(per_seed) >= MIN_SEEDS else 0.0


PANELS = (("all four domains", metric_of("bpb")), ("own domain", lambda s: own_other(s, "bpb")[0]),
          ("the other three domains", lambda s: own_other(s, "bpb")[1]))


def figure(found: dict, local: dict, controls: dict[str, dict]) -> None:
    """Paired gain over local against bytes moved (log scale), on all domains and split into each client's own
    domain and the others: a line per rule across budgets, FedAvg a point, each local+ a band (it moves no bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(16, 4.8), sharey=True)
    for ax, (title, value) in zip(axes, PANELS):
        families: dict[str, list[tuple[float, float, float, str]]] = {}
        for label, (runs, budget, _) in found.items():
            if label.startswith("local") or not runs:
                continue
            mean, half = gain(runs, local, value)
            families.setdefault(label.split(",")[0], []).append(
                (mean_bytes(runs), mean, half, f"{budget}" if budget else ""))
        for family, points in families.items():
            points.sort()
            xs, ys, err, names = zip(*points)
            ax.errorbar(xs, ys, yerr=err, marker="*" if "FedAvg" in family else "o", capsize=3,
                        linestyle="--" if "oracle" in family else "-", label=family)
            for x, y, name in zip(xs, ys, names):
                if name:
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
        for (name, control), colour in zip(controls.items(), ("grey", "tan")):
            mean, half = gain(control, local, value)
            lo, hi = (mean - half, mean + half) if half else (mean - 1e-4, mean + 1e-4)
            ax.axhspan(lo, hi, color=colour, alpha=0.3, label=f"{name} (no bytes)")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set(xlabel="bytes moved in a run (up + down, all clients; log)", title=title)
    axes[0].set_ylabel("local − run, bits per byte\n(above 0: better than local)")
    axes[0].legend(fontsize="small")
    fig.suptitle("what text consensus buys, against its traffic (points: mean over seeds; bars: 95% t from "
                 f"{MIN_SEEDS} seeds)")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)


if __name__ == "__main__":
    main()
