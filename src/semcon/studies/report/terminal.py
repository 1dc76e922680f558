"""What a run prints when it ends: the rich tables per round and per domain, and the outcome in a few lines."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from semcon.comm import human_bytes
from semcon.rounds.rundir import read_rows
from semcon.studies.report.cells import arrow, clip
from semcon.studies.report.numbers import split_own, training_budget


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
        lines.append(f"  {client:<12} own ({domain}) {arrow(was[0], now[0])} · other domains {arrow(was[1], now[1])}")
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
        lines += [f"  [{r['client']}] {clip(r['prompt'], 70)} -> {clip(r['text'], 110)}" for r in picked]
    adapters = sum(f.stat().st_size for f in Path(run_dir).glob("adapters/*/adapter_model.safetensors"))
    moved = summary["bytes_up"] + summary["bytes_down"]
    if adapters and summary["method"] == "semantic_consensus":
        fedavg = 2 * adapters * summary["rounds"]  # each client's adapter up and the average down, every round
        lines.append(f"bytes moved: {human_bytes(moved)}; LoRA-FedAvg of these adapters ({human_bytes(adapters / len(summary['clients']))} "
                     f"each, up and down every round) would have moved {human_bytes(fedavg)}: {fedavg / max(moved, 1):,.0f}x more")
    else:
        lines.append(f"bytes moved: {human_bytes(moved)}")
    return lines
