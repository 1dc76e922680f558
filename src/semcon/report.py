"""What semcon reports, in one room: the terminal tables of a run, and the markdown tables and figures that
``compare``, ``ablate`` and ``replay`` write (statistics over seeds from ``stats.py``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from semcon.comm import ARCHS, arch_from_config, human_bytes, lora_parameters
from semcon.config import RunConfig
from semcon.provenance import describe
from semcon.rundir import PLOT_NAMES, kind_of, read_rows
from semcon.stats import MIN_SEEDS, seed_level, t_interval

Runs = dict[str, dict[int, dict]]  # method -> seed -> that run's summary
ROUND_PHASES = ("train", "generate", "upload", "embed", "aggregate", "transfer", "evaluate")


def round_table(summary: dict) -> Table:
    table = Table(title="rounds", title_justify="left")
    for col in ("round", "bytes up", "bytes down", *(f"{p} s" for p in ROUND_PHASES), "agreement", "labels", "rejected",
                "peak RSS GiB"):
        table.add_column(col, justify="right")
    for r in summary["per_round"]:
        s = r["seconds"]
        agreement = r.get("mean_agreement")
        table.add_row(str(r["round"]), f"{r['bytes_up']:,}", f"{r['bytes_down']:,}",
                      *(f"{s[p]:.1f}" if p in s else "-" for p in ROUND_PHASES),
                      f"{agreement:.3f}" if agreement is not None else "-",
                      f"{r['pseudo_labels']}/{r['prompts']}" if "prompts" in r else "-",
                      ", ".join(r.get("rejected", {})) or "-", f"{r['peak_rss_gb']:.2f}")
    return table


def nll_table(summary: dict) -> Table:
    """Held-out bits per byte of the reference answers per client and domain, base model → after the federation
    (bits per byte, unlike per-token NLL, compares across tokenizers)."""
    table = Table(title="held-out bits per byte per domain (base → after; lower is better)", title_justify="left")
    table.add_column("client")
    domains = sorted({d for per in summary["eval_after"].values() for d in per})
    for d in domains:
        table.add_column(d, justify="right")
    for client, after in summary["eval_after"].items():
        before = summary["eval_before"].get(client, {})
        own = summary.get("own_domain", {}).get(client)
        cells = []
        for d in domains:
            b, a = before.get(d, {}).get("bpb"), after.get(d, {}).get("bpb")
            cell = f"{b:.3f} → {a:.3f}" if b is not None else f"{a:.3f}" if a is not None else "-"
            cells.append(f"[bold]{cell}[/]" if d == own else cell)
        table.add_row(client, *cells)
    return table


def print_summary(summary: dict, console: Console) -> None:
    console.print(round_table(summary))
    console.print(nll_table(summary))
    console.print(f"total: {summary['bytes_up']:,} B up, {summary['bytes_down']:,} B down, "
                  f"{summary['seconds']:.0f} s, peak RSS {summary['peak_rss_gb']:.2f} GiB")


def outcome_lines(run_dir: Path, summary: dict, examples: int = 3) -> list[str]:
    """What a person wants to see when a run ends: per client, held-out bits per byte before -> after on its own
    domain and the others; a few pseudo-labels with the client each came from; the bytes moved against what
    LoRA-FedAvg of the same adapters would have moved."""
    lines = ["held-out bits per byte, base model -> after (lower is better):"]
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    for client, domain in (summary.get("own_domain") or {}).items():
        was, now = (split_own(scores.get(client, {}), domain, "bpb") for scores in (before, after))
        lines.append(f"  {client:<12} own ({domain}) {_arrow(was[0], now[0])} · other domains {_arrow(was[1], now[1])}")
    if budget := training_budget(summary):
        lines.append("training per client (optimizer steps, trained tokens): "
                     + ", ".join(f"{c} {steps:,}, {tokens:,}" for c, (steps, tokens) in budget.items()))
    last = sorted(Path(run_dir).glob("pseudo_labels/round_*.jsonl"))
    labels = read_rows(last[-1]) if last else []
    picked = list({r["client"]: r for r in labels}.values())[:examples]  # one per source client first
    picked += [r for r in labels if r not in picked][:examples - len(picked)]
    if picked:
        number = int(last[-1].stem.removeprefix("round_"))
        lines.append(f"pseudo-labels of round {number} ({len(labels)} in all), each with the client it came from:")
        lines += [f"  [{r['client']}] {_clip(r['prompt'], 70)} -> {_clip(r['text'], 110)}" for r in picked]
    adapters = sum(f.stat().st_size for f in Path(run_dir).glob("adapters/*/adapter_model.safetensors"))
    moved = summary["bytes_up"] + summary["bytes_down"]
    if adapters and summary["method"] == "semantic_consensus":
        fedavg = 2 * adapters * summary["rounds"]  # each client's adapter up and the average down, every round
        lines.append(f"bytes moved: {human_bytes(moved)}; LoRA-FedAvg of these adapters ({human_bytes(adapters / len(summary['clients']))} "
                     f"each, up and down every round) would have moved {human_bytes(fedavg)}: {fedavg / max(moved, 1):,.0f}x more")
    else:
        lines.append(f"bytes moved: {human_bytes(moved)}")
    return lines


def _arrow(before: float | None, after: float | None) -> str:
    return " -> ".join("–" if v is None else f"{v:.3f}" for v in (before, after))


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


log = logging.getLogger(__name__)

# Quality metrics of the report, comparable across tokenizers (per-token NLL is not: it has its own table).


# bpb_plain: bits per byte of the references without GSM8K's calculator annotations (evaluate.plain_bpb)
METRICS = (("bpb", "bits/byte ↓"), ("bpb_plain", "bits/byte plain ↓"), ("rouge_l", "ROUGE-L ↑"), ("cosine", "cosine ↑"), ("accuracy", "MMLU acc ↑"),
           ("exact_match", "GSM8K EM ↑"))


LOWER_IS_BETTER = frozenset({"bpb", "bpb_plain", "nll"})


BASELINE = "local"


def client_scores(per_client: dict[str, dict[str, dict[str, float]]], metric: str) -> dict[str, float]:
    """Per client, the metric averaged over the eval domains where it exists."""
    scores = {}
    for client, per_domain in per_client.items():
        values = [m[metric] for m in per_domain.values() if metric in m]
        if values:
            scores[client] = float(np.mean(values))
    return scores


def seed_scores(summary: dict, metric: str) -> dict[str, float]:
    """Per client of one run, the metric after training averaged over the eval domains."""
    return client_scores(summary.get("eval_after") or {}, metric)


def paired_differences(runs: Runs, method: str, metric: str, baseline: str = BASELINE) -> dict[int, dict[str, float]]:
    """``method - baseline`` per seed both ran and per client of that seed; a method with one model (centralized)
    pairs it with each of the baseline's clients."""
    diffs: dict[int, dict[str, float]] = {}
    for seed, base in runs[baseline].items():
        if seed not in runs[method]:
            continue
        ours, baseline_scores = seed_scores(runs[method][seed], metric), seed_scores(base, metric)
        single = next(iter(ours.values())) if len(ours) == 1 and not ours.keys() & baseline_scores.keys() else None
        per_client = {c: value - theirs for c, theirs in baseline_scores.items()
                      if (value := ours.get(c, single)) is not None}
        if per_client:
            diffs[seed] = per_client
    return diffs


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


def split_own(per_domain: dict[str, dict], domain: str | None, metric: str) -> tuple[float | None, float | None]:
    """One client's metric on its own domain, and its mean over the other domains (None where absent)."""
    rest = [m[metric] for d, m in per_domain.items() if d != domain and metric in m]
    return per_domain.get(domain, {}).get(metric), (float(np.mean(rest)) if rest else None)


def own_other(summary: dict, metric: str) -> tuple[float | None, float | None]:
    """Client-mean of the metric on each client's own domain, and of its mean over the other domains."""
    own, other = [], []
    after = summary.get("eval_after") or {}
    for client, domain in (summary.get("own_domain") or {}).items():
        if domain is None:
            continue
        mine, rest = split_own(after.get(client, {}), domain, metric)
        own += [mine] if mine is not None else []
        other += [rest] if rest is not None else []
    return (float(np.mean(own)) if own else None), (float(np.mean(other)) if other else None)


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


def _mean(values) -> float | None:
    return float(np.mean(values)) if values else None


def _seed_mean(per_seed: dict[int, dict], value: Callable[[dict], float]) -> float:
    return float(np.mean([value(s) for s in per_seed.values()]))


def training_budget(summary: dict) -> dict[str, tuple[int, int]]:
    """Per client, the optimizer steps and trained tokens of the whole run (from its rounds' losses and tokens)."""
    budget: dict[str, tuple[int, int]] = {}
    for r in summary["per_round"]:
        for client, losses in (r.get("train_loss") or {}).items():
            steps, tokens = budget.get(client, (0, 0))
            budget[client] = (steps + len(losses), tokens + (r.get("train_tokens") or {}).get(client, 0))
    return budget


def budget_cell(per_seed: dict[int, dict], which: int) -> str:
    """Mean over seeds and clients of the steps (0) or trained tokens (1) per client, with the clients' range."""
    values = [v[which] for s in per_seed.values() for v in training_budget(s).values()]
    if not values:
        return "–"
    mean, lo, hi = float(np.mean(values)), min(values), max(values)
    text = f"{mean:,.0f}"
    return text if lo == hi else f"{text} ({lo:,}–{hi:,})"


def per_client_round(summary: dict) -> float:
    """Mean bytes (up + down) per client per communicating round."""
    rounds = [r for r in summary["per_round"] if r["bytes_up"] or r["bytes_down"]]
    total = sum(r["bytes_up"] + r["bytes_down"] for r in rounds)
    return total / max(len(rounds) * len(summary["clients"]), 1)


def adapter_bytes(cfg: RunConfig) -> int | None:
    """The fp32 LoRA adapter of the run's first client in bytes, from its model's shapes (None: a shape semcon cannot
    read here, such as a hub id without network)."""
    model = cfg.clients[0].model
    try:
        from semcon.assets import resolve_model

        arch = ARCHS[model] if model in ARCHS else arch_from_config(resolve_model(model))
    except Exception:  # noqa: BLE001 - a hub id without network: no analytic figure
        return None
    return lora_parameters(arch, cfg.train.lora.r, cfg.train.lora.target_modules) * 4


def analytic_ratio(cfg: RunConfig, summary: dict) -> str | None:
    """LoRA-FedAvg over semantic-consensus bytes for this run's model, from its shapes and the measured
    mean answer bytes (so the report puts the analytic figure beside the measured one)."""
    up = [r for r in summary["per_round"] if r.get("prompts")]
    if not up or (one := adapter_bytes(cfg)) is None:
        return None
    adapter = 2 * one  # up and down
    text = np.mean([(r["bytes_up"] + r["bytes_down"]) / max(len(r.get("accepted", [])), 1) for r in up])
    return (f"{adapter / text:,.0f}x per client per round (fp32 adapter {human_bytes(one)} each way vs "
            f"{human_bytes(text)} of encoded text up + down, this run's mean)")


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def _seeds_text(seeds: list[int]) -> str:
    return f"{len(seeds)} ({', '.join(map(str, seeds))})"


def cell_title(name: str) -> str:
    """The report title of an ablation's cell (written by ``semcon ablate``, and again by ``semcon report``)."""
    return f"semcon ablate cell `{name}`"


def write_report(out: Path, runs: Runs, cfgs: dict[str, RunConfig], skipped: dict[str, str],
                 title: str = "semcon compare", missing: list[str] = ()) -> Path:
    """``out/report.md`` and its PNG plots from each method's per-seed summaries (one run: one method, one seed,
    written into its own directory). ``missing``: planned runs that have not finished, named in the report."""
    out = Path(out)
    cfg = next(iter(cfgs.values()))
    plots, absent = make_plots(out, runs, adapter_bytes(cfg))
    single = kind_of(out) == "run"
    metrics = [(k, label) for k, label in METRICS
               if any(seed_scores(s, k) for per_seed in runs.values() for s in per_seed.values())]
    lines = [f"# {title}", "",
             f"Setting: `{cfg.name}`, {len(cfg.clients)} clients, {cfg.rounds} consensus rounds; split seed "
             f"{cfg.data.split_seed} (evaluation sets and public prompts are the same in every run, so runs "
             f"are paired on client and seed); multiple-choice prompt `{cfg.eval.mmlu_prompt}`. Seeds run: "
             + "; ".join(f"{m} {_seeds_text(sorted(per_seed))}" for m, per_seed in runs.items()) + ".", ""]
    lines += _provenance_lines(runs)
    lines += consensus_lines(cfgs)
    if missing:
        lines += [f"**Partial report:** planned but not finished, so left out: {', '.join(missing)}.", ""]
    if single:
        lines += _single_run_lines(out, next(iter(next(iter(runs.values())).values())), metrics)
    else:
        lines += ["Quality is held-out, per client averaged over the eval domains; each cell is the mean over seeds "
                  f"of the client-mean ± the half-width of its 95% t-interval over seeds from {MIN_SEEDS} seeds on "
                  "(fewer: the seeds' range in brackets, no interval claimed); '± clients' is the std over clients "
                  "within a seed, averaged over seeds (centralized has one model). Bytes, time and energy are means "
                  "over seeds.", ""]
        lines += _main_table(runs, metrics, skipped)
    lines += _network_note(cfg)
    energy = sorted({s["energy_method"] for ps in runs.values() for s in ps.values() if s.get("energy_method")})
    lines += [f"Energy: {', '.join(energy) or 'not measured'}.", ""]
    lines += _difference_section(runs, metrics)
    lines += _own_other_section(runs, metrics)
    lines += _nll_section(runs, cfg)
    lines += _dropped_section(runs)
    lines += _privacy_section(runs)
    lines += _time_section(runs)
    lines += _communication_section(runs, cfgs)
    lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    lines += [*(f"Not plotted: {name.replace('_', ' ')}: {why}." for name, why in absent.items()), ""] if absent else []
    if not single:
        lines += ["Run directories: " + "; ".join(f"{m}: " + ", ".join(f"[seed-{s}]({m}/seed-{s}/)" for s in sorted(ps))
                                                  for m, ps in runs.items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def consensus_lines(cfgs: dict[str, RunConfig]) -> list[str]:
    """The consensus rule of the semantic-consensus runs, and a warning when it is a measurement bound."""
    cfg = cfgs.get("semantic_consensus")
    if cfg is None:
        return []
    c = cfg.consensus
    signal = f" on competence signal `{c.used_signal}` ({c.competence_norm})" if c.used_signal else ""
    lines = [f"Consensus rule: `{c.rule}`{signal}.", ""]
    if c.oracle:
        lines = [f"**A bound, not a method:** semantic_consensus here uses `{c.rule}`, which reads what no deployment "
                 "has (" + ("who each domain's expert is" if c.rule == "oracle_expert" else "the held-back references")
                 + "). It bounds what any selection rule, and the text channel itself, can reach.", ""]
    return lines


def _provenance_lines(runs: Runs) -> list[str]:
    """What produced the runs (from their summaries), once if all runs agree, else per run."""
    found: dict[str, list[str]] = {}
    for method, per_seed in runs.items():
        for seed, s in sorted(per_seed.items()):
            text = (f"Produced by {describe(s['provenance'])}" if s.get("provenance")
                    else "Provenance not recorded (a run from before semcon recorded it)")
            found.setdefault(text, []).append(f"{method} seed {seed}")
    if len(found) == 1:
        return [f"{next(iter(found))}.", ""]
    return [*(f"- {text}: {', '.join(names)}." for text, names in found.items()), ""]


def _main_table(runs: Runs, metrics: list[tuple[str, str]], skipped: dict[str, str]) -> list[str]:
    fedavg_bytes = (_seed_mean(runs["fedavg"], lambda s: s["bytes_up"] + s["bytes_down"])
                    if "fedavg" in runs else None)
    head = ["method", "seeds", *(c for _, label in metrics for c in (label, "± clients")), "steps / client",
            "trained tokens / client", "bytes up", "bytes down",
            "× fedavg bytes", "wall s", "modelled transfer s", "round s (compute + modelled)", "energy kWh"]
    rows = []
    for method, per_seed in runs.items():
        total = _seed_mean(per_seed, lambda s: s["bytes_up"] + s["bytes_down"])
        transfer = _seed_mean(per_seed, _transfer_s)
        per_round = _seed_mean(per_seed, lambda s: (_compute_s(s) + _transfer_s(s)) / max(len(s["per_round"]), 1))
        energy = [s["energy_kwh"] for s in per_seed.values() if s.get("energy_kwh")]
        cells = []
        for k, _ in metrics:
            cells += [over_seeds(per_seed, lambda s, k=k: _mean(list(seed_scores(s, k).values()))),
                      client_spread(per_seed, k)]
        rows.append([method, str(len(per_seed)), *cells, budget_cell(per_seed, 0), budget_cell(per_seed, 1),
                     human_bytes(_seed_mean(per_seed, lambda s: s["bytes_up"])),
                     human_bytes(_seed_mean(per_seed, lambda s: s["bytes_down"])),
                     f"{total / fedavg_bytes:.2e}" if fedavg_bytes else "–",
                     f"{_seed_mean(per_seed, lambda s: s['seconds']):.0f}", f"{transfer:.1f}",
                     f"{per_round:.1f}",
                     f"{np.mean(energy):.2e}" if energy else "not measured"])
    rows += [[method, f"not applicable: {why}"] for method, why in skipped.items()]
    return [*md_table(head, rows), ""]


def _single_run_lines(out: Path, summary: dict, metrics: list[tuple[str, str]]) -> list[str]:
    """What one run did, as the terminal said it when it ended (before -> after per client, example labels with
    their clients, bytes against LoRA-FedAvg of the same adapters), then every client's held-out scores."""
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    domains = sorted({d for per in after.values() for d in per})

    def cell(client: str, domain: str, k: str) -> str:
        now, was = after[client].get(domain, {}).get(k), before.get(client, {}).get(domain, {}).get(k)
        return "–" if now is None else f"{now:.3f}" if was is None else f"{was:.3f} -> {now:.3f}"

    rows = [[client, label, *cells] for client in after for k, label in metrics
            for cells in [[cell(client, d, k) for d in domains]] if any(c != "–" for c in cells)]
    steps = training_budget(summary)
    return ["## Outcome", "", *(f"    {line}" for line in outcome_lines(out, summary)), "",
            "Held-out scores per client and domain" + (" (base model -> after)" if before else " after the run")
            + "; a client's own domain is its private data's:", "",
            *md_table(["client", "metric", *domains], rows), "",
            f"Traffic {human_bytes(summary['bytes_up'])} up and {human_bytes(summary['bytes_down'])} down; wall time "
            f"{summary['seconds']:.0f} s; modelled transfer {_transfer_s(summary):.1f} s"
            + ("; training per client: " + ", ".join(f"{c} {n:,} steps" for c, (n, _) in steps.items()) if steps else "")
            + ".", ""]


def _transfer_s(summary: dict) -> float:
    return sum(r.get("modelled_transfer_s") or 0 for r in summary["per_round"])


def _compute_s(summary: dict) -> float:
    return sum(sum(r["seconds"].values()) for r in summary["per_round"])


def _network_note(cfg: RunConfig) -> list[str]:
    net = cfg.network
    return [f"Transfer times are **modelled**, not measured: the in-process run moves bytes for free, so each "
            f"round's measured bytes are put through a link of {net.uplink_mbps:g} Mbit/s up, "
            f"{net.downlink_mbps:g} Mbit/s down and {net.latency_ms:g} ms latency per message "
            "(`network.*`), clients in parallel.", ""]


def _difference_section(runs: Runs, metrics: list[tuple[str, str]]) -> list[str]:
    others = [m for m in runs if m != BASELINE]
    if BASELINE not in runs or not others:
        return []
    rows = [[method, *(difference_cell(paired_differences(runs, method, k)) for k, _ in metrics)] for method in others]
    clients = []
    for method in others:
        diffs = paired_differences(runs, method, "bpb")
        for client in dict.fromkeys(c for per in diffs.values() for c in per):
            clients.append([method, client, *(f"{diffs[s][client]:+.3f}" if client in diffs.get(s, {}) else "–"
                                              for s in sorted(runs[BASELINE]))])
    lower = [label for k, label in metrics if k in LOWER_IS_BETTER]
    higher = [label for k, label in metrics if k not in LOWER_IS_BETTER]
    sign = "; ".join(part for part in (
        f"negative is better for {', '.join(lower)}" if lower else "",
        f"positive is better for {', '.join(higher)}" if higher else "") if part)
    return [f"## Paired difference to {BASELINE}", "",
            f"The seed is the replicate: the clients of one seed share one label set, so they are not independent. "
            f"Per seed, the mean over clients of (method − {BASELINE}) on the same client and seed (centralized's one "
            f"model is paired with each {BASELINE} client); then the mean over seeds, the 95% t-interval over the "
            f"seed means (`t`) and the 95% two-level bootstrap interval (`boot`: 10,000 resamples of the seeds, then "
            f"of the clients within each drawn seed; RNG seed 0). With fewer than {MIN_SEEDS} seeds the seeds' "
            f"values are printed and no interval is claimed. {sign[:1].upper() + sign[1:]}.", "",
            *md_table(["method", *(label for _, label in metrics)], rows), "",
            f"Per client, (method − {BASELINE}) in bits per byte, seed by seed:", "",
            *md_table(["method", "client", *(f"seed {s}" for s in sorted(runs[BASELINE]))], clients), ""]


def _own_other_section(runs: Runs, metrics: list[tuple[str, str]]) -> list[str]:
    def has_own(per_seed):
        return any(d is not None for s in per_seed.values() for d in (s.get("own_domain") or {}).values())

    methods = [m for m, per_seed in runs.items() if has_own(per_seed)]
    if not methods:
        return []
    cols = [(k, label, i) for k, label in metrics for i in (0, 1)
            if any(own_other(s, k)[i] is not None for m in methods for s in runs[m].values())]
    rows = [[m, *(over_seeds(runs[m], lambda s, k=k, i=i: own_other(s, k)[i]) for k, _, i in cols)]
            for m in methods]
    return ["## Own domain vs the other domains", "",
            "Per client its own private domain vs the mean over the other eval domains, then the mean over "
            f"clients; mean over seeds ± 95% t-interval ({MIN_SEEDS} seeds or more; fewer: their range). Methods without own domains (centralized, iid or "
            "dirichlet partitions) are left out.", "",
            *md_table(["method", *(f"{label} {('own', 'other')[i]}" for _, label, i in cols)], rows), ""]


def _nll_section(runs: Runs, cfg: RunConfig) -> list[str]:
    clients = list(dict.fromkeys(c for per_seed in runs.values() for s in per_seed.values()
                                 for c in seed_scores(s, "nll")))
    if not clients:
        return []
    models = {c.name: c.model for c in cfg.clients} | {"centralized": cfg.clients[0].model}
    rows = [[c, models.get(c, "?"), *(over_seeds(per_seed, lambda s, c=c: seed_scores(s, "nll").get(c))
                                      for per_seed in runs.values())] for c in clients]
    return ["## Per-token NLL per client", "",
            f"Held-out reference NLL per token, averaged over the eval domains (mean over seeds ± 95% t-interval from "
            f"{MIN_SEEDS} seeds on). "
            "Per-token NLL depends on the tokenizer, so compare it only within a row (one client, one model); "
            "across models use bits per byte.", "",
            *md_table(["client", "model", *runs], rows), ""]


def _dropped_section(runs: Runs) -> list[str]:
    if not any(s.get("dropped_too_long") for per_seed in runs.values() for s in per_seed.values()):
        return []
    clients = list(dict.fromkeys(c for per_seed in runs.values() for s in per_seed.values()
                                 for c in s.get("dropped_too_long") or {}))
    def dropped(per_seed: dict[int, dict], client: str) -> str:
        counts = [s["dropped_too_long"].get(client, 0) for s in per_seed.values() if s.get("dropped_too_long")]
        return f"{np.mean(counts):.3g}" if counts else "–"

    rows = [[c, *(dropped(per_seed, c) for per_seed in runs.values())] for c in clients]
    return ["## Training examples dropped as too long", "",
            "Examples of the last round's training set (private and pseudo-labelled) longer than "
            "`train.max_length`, left out, per client (mean over seeds).", "",
            *md_table(["client", *runs], rows), ""]


def privacy_numbers(summary: dict) -> dict | None:
    """The audit at the end of a run (its last round's row): canaries in the planting client's uploads, in any
    pseudo-label, in the other clients' completions; mean exposure for the planting client and the others; and the
    filter's withheld and redacted answers over all rounds."""
    owner = summary.get("canary_client")
    rows = [r.get("privacy") or {} for r in summary["per_round"]]
    if not any(rows):
        return None
    last = next((r for r in reversed(rows) if r), {})
    others = [v for n, v in last.items() if n != owner]
    uploads = [r.get(owner, {}).get("uploaded", 0) for r in rows]
    return {"in_uploads": max(uploads, default=0), "in_labels": max((v.get("received", 0) for r in rows
                                                                     for v in r.values()), default=0),
            "in_others_completions": max((v.get("completed", 0) for v in others), default=0),
            "exposure_owner": _mean(last.get(owner, {}).get("exposure", [])),
            "exposure_others": _mean([x for v in others for x in v.get("exposure", [])]),
            "withheld": sum(v.get("withheld", 0) for r in rows for v in r.values()),
            "redacted": sum(v.get("redacted", 0) for r in rows for v in r.values())}


def _privacy_section(runs: Runs) -> list[str]:
    found = {m: {seed: n for seed, s in per_seed.items() if (n := privacy_numbers(s))} for m, per_seed in runs.items()}
    if not any(found.values()):
        return []
    keys = [("in_uploads", "canaries in its uploads", 0), ("in_labels", "in pseudo-labels", 0),
            ("in_others_completions", "in others' completions", 0), ("exposure_owner", "exposure, planting client", 2),
            ("exposure_others", "exposure, others", 2), ("withheld", "answers withheld", 0),
            ("redacted", "PII redacted", 0)]
    rows = [[m, *(_over(per_seed, lambda n, k=k: n[k], d) for k, _, d in keys)] for m, per_seed in found.items() if per_seed]
    some = next(s for ps in runs.values() for s in ps.values() if s.get("canary_client") or privacy_numbers(s))
    return ["## Output privacy", "",
            f"The canaries planted in `{some.get('canary_client')}`'s private data: how many of them were found "
            "(normalised edit similarity >= 0.8 on the secret) in that client's uploads and in any pseudo-label "
            "(the most in one round), and in another client's greedy completion of a canary's question after "
            "training (the most of any client, last round); the exposure log2(C+1) − log2(rank) of the true secret "
            "among C random codes of its format (about 1: chance; log2(C+1): the model prefers it to every one), "
            "under the planting client's model and, averaged, the others' (parameter averaging: the averaged "
            "adapter); answers the upload filter withheld and PII it redacted, over all rounds. Mean over seeds.",
            "", *md_table(["method", *(label for _, label, _ in keys)], rows), ""]


PHASES = {"train": "training", "answer": "answers", "exchange": "exchange", "rest": "evaluation and setup"}


def phase_seconds(summary: dict) -> dict[str, float]:
    """A run's wall seconds split into training, answering the public prompts, the exchange (upload, embedding,
    aggregation, transfer) and the rest (evaluation and setup), which the rounds do not time."""
    phases = dict.fromkeys(("train", "answer", "exchange"), 0.0)
    for r in summary["per_round"]:
        for phase, seconds in r["seconds"].items():
            phases[{"train": "train", "generate": "answer"}.get(phase, "exchange")] += seconds
    return phases | {"rest": summary["seconds"] - sum(phases.values())}


def _time_section(runs: Runs) -> list[str]:
    every = [phase_seconds(s) for per_seed in runs.values() for s in per_seed.values()]
    total = {p: sum(e[p] for e in every) for p in PHASES}
    rows = [[method, str(len(per_seed)),
             *(f"{_seed_mean(per_seed, lambda s, p=p: phase_seconds(s)[p]):.0f}" for p in PHASES),
             f"{_seed_mean(per_seed, lambda s: s['seconds']):.0f}"] for method, per_seed in runs.items()]
    return ["## Where the time went", "",
            "Wall seconds of a run by phase, mean over seeds: training, answering the public prompts, the exchange "
            "(upload, embedding, aggregation, transfer) and the rest, mostly the final evaluation and setup. A "
            "run that was paused counts its pauses in the phase they fell in.", "",
            *md_table(["method", "seeds", *(f"{label} s" for label in PHASES.values()), "wall s"], rows), "",
            f"All {len(every)} runs: {sum(total.values()):,.0f} s, of which "
            + ", ".join(f"{label} {total[p]:,.0f} s" for p, label in PHASES.items()) + ".", ""]


def _communication_section(runs: Runs, cfgs: dict[str, RunConfig]) -> list[str]:
    if "semantic_consensus" not in runs or "fedavg" not in runs:
        return []
    sc, fa = (runs[m][min(runs[m])] for m in ("semantic_consensus", "fedavg"))
    if not fa["bytes_up"] + fa["bytes_down"]:
        return []
    measured = (fa["bytes_up"] + fa["bytes_down"]) / max(sc["bytes_up"] + sc["bytes_down"], 1)
    lines = ["## Communication", "",
             f"- measured in this compare (first seed): fedavg moved **{measured:,.0f}x** the bytes of semantic "
             f"consensus ({per_client_round(fa) / max(per_client_round(sc), 1):,.0f}x per client per round, up + "
             "down; fedavg also averages once after the last training round)"]
    if ratio := analytic_ratio(cfgs["semantic_consensus"], sc):
        lines.append(f"- analytic for this model (`semcon comm`): {ratio}")
    lines += ["- for large models see `semcon comm` (Llama-3.1-405B, LoRA r=32 on q_proj,v_proj: about 1000x)", ""]
    return lines


def round_bpb(row: dict) -> float | None:
    """Held-out bits per byte after this round, mean over clients and domains (None without scores)."""
    values = [m["bpb"] for per_domain in (row.get("reference") or {}).values() for m in per_domain.values()
              if "bpb" in m]
    return _mean(values)


def per_round_mean(per_seed: dict[int, dict], value: Callable[[dict], float | None]) -> tuple[list[int], list[float]]:
    """Rounds and, per round, the mean over seeds of ``value(row)`` where a seed has it."""
    by_round: dict[int, list[float]] = {}
    for s in per_seed.values():
        for r in s["per_round"]:
            if (v := value(r)) is not None:
                by_round.setdefault(r["round"], []).append(v)
    rounds = sorted(by_round)
    return rounds, [float(np.mean(by_round[r])) for r in rounds]


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


# Each figure function returns the figure, or why there is none (a sentence for the report).

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
                                        _dig(r.get("answer_quality"), *keys, metric))
                if xs:
                    ax.plot(xs, ys, style, marker=marker, linewidth=width, markersize=3 + width, zorder=2 + z,
                            alpha=1.0 if name == "consensus" else 0.8, label=prefix + name)
        ax.set(xlabel="round", ylabel=f"{label} to the reference ({_seeds_word(methods)})", title=f"pseudo-labels: {label}")
        _round_axis(ax)
        ax.legend(fontsize="small")
    return fig


def _dig(node, *keys):
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


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
        values = np.array([_seed_mean(ps, lambda s, p=phase: phase_seconds(s)[p]) for ps in runs.values()])
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


# What the consensus rounds chose: shared by the compare, ablation and replay reports.

def label_quality(summary: dict, metric: str) -> float | None:
    """A run's pseudo-label ``metric`` (rouge_l or cosine to the held-back references), mean over its rounds."""
    return _mean([v for r in summary["per_round"] if (v := _dig(r.get("answer_quality"), "consensus", metric))
                  is not None])


def mean_expert_share(summary: dict) -> float | None:
    """The share of each domain's labels that its expert supplied, mean over domains and rounds."""
    return _mean([v for r in summary["per_round"] for v in (r.get("expert_share") or {}).values()])


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def replay_lines(rows: list[dict], run: str, produced_by: dict) -> list[str]:
    """The markdown of ``semcon replay``: one row per rule and round, bounds named as bounds; ``produced_by``:
    the provenance of the session that replayed."""
    domains = sorted({d for r in rows for d in r["expert_share"]})
    clients = list(dict.fromkeys(c for r in rows for c in r["label_share"]))
    attacks = {n: kind for r in rows for n, kind in r.get("attacks", {}).items()}
    head = ["rule", "round", "labelled", "ROUGE-L", "cosine", "random ROUGE-L", "random cosine",
            *(["attacker share"] if attacks else []), *(f"expert share {d}" for d in domains),
            *(f"labels from {c}" for c in clients)]
    table = []
    for r in rows:
        q = r["quality"] or {}
        cells = [_dig(q, "consensus", "rouge_l"), _dig(q, "consensus", "cosine"), _dig(q, "random", "rouge_l"),
                 _dig(q, "random", "cosine")]
        table.append([f"{r['rule']}{' (bound)' if r['bound'] else ''}", str(r["round"]), _share(r["labelled"]),
                      *("–" if v is None else f"{v:.3f}" for v in cells),
                      *([_share(sum(r["label_share"].get(n, 0.0) for n in attacks))] if attacks else []),
                      *(_share(r["expert_share"].get(d)) for d in domains),
                      *(_share(r["label_share"].get(c)) for c in clients)])
    return [f"# semcon replay of `{run}`", "", f"Produced by {describe(produced_by)}.", "",
            "Each rule recomputed from the run's kept uploads (`uploads/round_NN.jsonl`), no training. ROUGE-L and "
            "cosine: the pseudo-labels against the held-back references (random: a uniformly random client's "
            "answer); expert share: of each domain's labels, the share that is the answer of the client trained "
            "on that domain; labels from: each client's share of all labels. Round 1's uploads follow round 0 "
            "(private data only), so round 1 is an honest offline comparison of the rules; later rounds' uploads "
            "came from clients trained on this run's own labels, so their rows are indicative only. Rules marked "
            "(bound) read what no deployment has (who the experts are, or the references): they bound what any "
            "rule, and the text channel, can reach.", "",
            *([f"Replayed with {', '.join(f'{n} ({k})' for n, k in attacks.items())} as attackers: each one's kept "
               "upload changed as such a client would have sent it.", ""] if attacks else []),
            *md_table(head, table), ""]


def _over(per_seed: dict[int, dict], value: Callable[[dict], float | None], digits: int = 3) -> str:
    return over_seeds(per_seed, value, digits) if per_seed else "–"


def _paired(runs: Runs, method: str, metric: str = "bpb") -> str:
    if BASELINE not in runs or method == BASELINE:
        return "–"
    return difference_cell(paired_differences(runs, method, metric))


def _client_mean(summary: dict, metric: str = "bpb") -> float | None:
    return _mean(list(seed_scores(summary, metric).values()))


def honest_mean(summary: dict, metric: str = "bpb", excluded: set[str] = frozenset()) -> float | None:
    """The metric's mean over the clients that do not attack, and not in ``excluded`` either (a sweep passes
    every cell's attackers, so that all its cells average the same clients)."""
    skip = set(summary.get("attackers") or []) | set(excluded)
    return _mean([v for c, v in seed_scores(summary, metric).items() if c not in skip])


def attacker_share(summary: dict) -> float | None:
    """The attackers' share of all pseudo-labels, mean over rounds (None: no labels; 0 without attackers)."""
    attackers = summary.get("attackers") or []
    shares = [sum((r.get("label_share") or {}).get(a, 0.0) for a in attackers) for r in summary["per_round"]
              if r.get("label_share")]
    return _mean(shares)


def ablation_report(out: Path, axes: dict[str, list[str]], cells: list) -> Path:
    """``out/ablation.md``, ``ablation.json`` and ``ablation_<axis>.png``: one row per cell and method."""
    ever = {a for c in cells if not c.error for p in c.runs.values() for s in p.values() for a in s.get("attackers") or []}
    attacked = bool(ever)
    honest = lambda s: honest_mean(s, excluded=ever)  # noqa: E731
    head = ["cell", "method", "seeds", "bits/byte ↓", f"− {BASELINE} (paired)", "own ↓", "other ↓",
            "label ROUGE-L", "label cosine", "expert share", "steps / client", "bytes", "wall s"]
    head[6:6] = ["honest bits/byte ↓", "attacker share"] if attacked else []
    rows, record = [], []
    for cell in cells:
        if cell.error:
            rows.append([cell.name, f"failed: {cell.error}", *[""] * (len(head) - 2)])
            record.append({"cell": cell.name, "overrides": cell.overrides, "error": cell.error})
            continue
        for method, per_seed in cell.runs.items():
            rule = cell.cfgs[method].consensus.rule if method == "semantic_consensus" else None
            label = method + (f" ({rule}{', a bound' if rule.startswith('oracle') else ''})" if rule else "")
            rows.append([cell.name, label, str(len(per_seed)), _over(per_seed, _client_mean), _paired(cell.runs, method),
                         _over(per_seed, lambda s: own_other(s, "bpb")[0]), _over(per_seed, lambda s: own_other(s, "bpb")[1]),
                         *([_over(per_seed, honest), _over(per_seed, attacker_share, 2)] if attacked else []),
                         _over(per_seed, lambda s: label_quality(s, "rouge_l")),
                         _over(per_seed, lambda s: label_quality(s, "cosine")),
                         _over(per_seed, mean_expert_share, 2), budget_cell(per_seed, 0),
                         human_bytes(_seed_mean(per_seed, lambda s: s["bytes_up"] + s["bytes_down"])),
                         f"{_seed_mean(per_seed, lambda s: s['seconds']):.0f}"])
            record.append({"cell": cell.name, "overrides": cell.overrides, "method": method, "rule": rule,
                           "bpb": [_client_mean(s) for s in per_seed.values()],
                           "paired_to_local": paired_differences(cell.runs, method, "bpb")
                           if BASELINE in cell.runs and method != BASELINE else [],
                           "expert_share": [mean_expert_share(s) for s in per_seed.values()],
                           "honest_bpb": [honest(s) for s in per_seed.values()],
                           "attacker_share": [attacker_share(s) for s in per_seed.values()],
                           "seconds": [s["seconds"] for s in per_seed.values()]})
    panels = [("honest_bpb", "honest clients' bits per byte ↓"), ("attacker_share", "attackers' share of the labels")
              ] if attacked else [("bpb", "held-out bits per byte (client mean) ↓")]
    plots = [_axis_plot(out, axis, axes, record, panels) for axis in axes]
    described = "; ".join(f"`{k}` ∈ {{{', '.join(v)}}}" for k, v in axes.items())
    lines = ["# semcon ablate", "", f"Axes: {described}. "
             "Each cell is a compare (its own report.md in its folder). Bits per byte: held-out, client-mean, mean over "
             f"seeds ± 95% t-interval from {MIN_SEEDS} seeds on (fewer: their range); paired: (method − local) with the "
             "seed as the replicate, as in each cell's report; own/other: each client's own domain vs the mean of the others; "
             "label ROUGE-L / cosine: the pseudo-labels against the held-back references, mean over rounds; expert "
             "share: of each domain's labels, the share that is its expert's answer; honest bits/byte: the mean over "
             f"the clients that attack in no cell ({', '.join(sorted(ever)) or 'none'} left out of every cell, so "
             "that all cells average the same clients); attacker share: the attackers' share of all labels, mean over rounds; "
             "steps / client: optimizer steps of a client over the run (the clients' range in brackets). "
             "A run that started from an "
             "earlier cell's round 0 and round-1 answers (same seed, only the server's consensus differs) counts "
             "round 0's seconds as that run spent them and round 1's answers as free; a baseline that never reads "
             "the consensus is run once and copied.", "",
             *_provenance_lines({f"{c.name}: {m}": ps for c in cells if not c.error for m, ps in c.runs.items()}),
             *md_table(head, rows), "", *(f"![{p.stem}]({p.name})" for p in plots if p), ""]
    (out / "ablation.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    path = out / "ablation.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _axis_plot(out: Path, axis: str, axes: dict[str, list[str]], record: list[dict],
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
