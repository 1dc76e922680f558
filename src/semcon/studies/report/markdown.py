"""``report.md`` of a run or a compare: its sections and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semcon.comm import human_bytes
from semcon.config import RunConfig
from semcon.provenance import describe
from semcon.rounds.rundir import kind_of
from semcon.studies.report.cells import budget_cell, client_spread, difference_cell, md_table, over_seeds, seeds_text
from semcon.studies.report.figures import make_plots
from semcon.studies.report.numbers import (
    BASELINE,
    LOWER_IS_BETTER,
    METRICS,
    PHASES,
    Runs,
    adapter_bytes,
    analytic_ratio,
    compute_s,
    mean_or_none,
    own_other,
    paired_differences,
    per_client_round,
    phase_seconds,
    privacy_numbers,
    seed_mean,
    seed_scores,
    training_budget,
    transfer_s,
)
from semcon.studies.report.terminal import outcome_lines
from semcon.studies.stats import MIN_SEEDS


def write_report(out: Path, runs: Runs, cfgs: dict[str, RunConfig], skipped: dict[str, str],
                 title: str = "semcon compare", missing: list[str] = ()) -> Path:
    """``out/report.md`` and its PNG plots from each method's per-seed summaries (one run: one method, one seed,
    written into its own directory). ``missing``: planned runs that have not finished, named in the report."""
    out = Path(out)
    cfg = next(iter(cfgs.values()))
    first = next(iter(next(iter(runs.values())).values()), None) if runs else None
    plots, absent = make_plots(out, runs, adapter_bytes(cfg, first))
    single = kind_of(out) == "run"
    metrics = [(k, label) for k, label in METRICS
               if any(seed_scores(s, k) for per_seed in runs.values() for s in per_seed.values())]
    lines = [f"# {title}", "",
             f"Setting: `{cfg.name}`, {len(cfg.clients)} clients, {cfg.rounds} consensus rounds; split seed "
             f"{cfg.data.split_seed} (evaluation sets and public prompts are the same in every run, so runs "
             f"are paired on client and seed); multiple-choice prompt `{cfg.eval.mmlu_prompt}`. Seeds run: "
             + "; ".join(f"{m} {seeds_text(sorted(per_seed))}" for m, per_seed in runs.items()) + ".", ""]
    lines += provenance_lines(runs)
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


def provenance_lines(runs: Runs) -> list[str]:
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
    fedavg_bytes = (seed_mean(runs["fedavg"], lambda s: s["bytes_up"] + s["bytes_down"])
                    if "fedavg" in runs else None)
    head = ["method", "seeds", *(c for _, label in metrics for c in (label, "± clients")), "steps / client",
            "trained tokens / client", "bytes up", "bytes down",
            "× fedavg bytes", "wall s", "modelled transfer s", "round s (compute + modelled)", "energy kWh"]
    rows = []
    for method, per_seed in runs.items():
        total = seed_mean(per_seed, lambda s: s["bytes_up"] + s["bytes_down"])
        transfer = seed_mean(per_seed, transfer_s)
        per_round = seed_mean(per_seed, lambda s: (compute_s(s) + transfer_s(s)) / max(len(s["per_round"]), 1))
        energy = [s["energy_kwh"] for s in per_seed.values() if s.get("energy_kwh")]
        cells = []
        for k, _ in metrics:
            cells += [over_seeds(per_seed, lambda s, k=k: mean_or_none(list(seed_scores(s, k).values()))),
                      client_spread(per_seed, k)]
        rows.append([method, str(len(per_seed)), *cells, budget_cell(per_seed, 0), budget_cell(per_seed, 1),
                     human_bytes(seed_mean(per_seed, lambda s: s["bytes_up"])),
                     human_bytes(seed_mean(per_seed, lambda s: s["bytes_down"])),
                     f"{total / fedavg_bytes:.2e}" if fedavg_bytes else "–",
                     f"{seed_mean(per_seed, lambda s: s['seconds']):.0f}", f"{transfer:.1f}",
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
            f"{summary['seconds']:.0f} s; modelled transfer {transfer_s(summary):.1f} s"
            + ("; training per client: " + ", ".join(f"{c} {n:,} steps" for c, (n, _) in steps.items()) if steps else "")
            + ".", ""]


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


def _privacy_section(runs: Runs) -> list[str]:
    found = {m: {seed: n for seed, s in per_seed.items() if (n := privacy_numbers(s))} for m, per_seed in runs.items()}
    if not any(found.values()):
        return []
    keys = [("in_uploads", "canaries in its uploads", 0), ("in_labels", "in pseudo-labels", 0),
            ("in_others_completions", "in others' completions", 0), ("exposure_owner", "exposure, planting client", 2),
            ("exposure_others", "exposure, others", 2), ("withheld", "answers withheld", 0),
            ("redacted", "PII redacted", 0)]
    rows = [[m, *(over_seeds(per_seed, lambda n, k=k: n[k], d) for k, _, d in keys)] for m, per_seed in found.items() if per_seed]
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


def _time_section(runs: Runs) -> list[str]:
    every = [phase_seconds(s) for per_seed in runs.values() for s in per_seed.values()]
    total = {p: sum(e[p] for e in every) for p in PHASES}
    rows = [[method, str(len(per_seed)),
             *(f"{seed_mean(per_seed, lambda s, p=p: phase_seconds(s)[p]):.0f}" for p in PHASES),
             f"{seed_mean(per_seed, lambda s: s['seconds']):.0f}"] for method, per_seed in runs.items()]
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
