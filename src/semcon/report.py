"""Tables of a finished run, for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

PHASES = ("train", "generate", "upload", "embed", "aggregate", "transfer", "evaluate")


def round_table(summary: dict) -> Table:
    table = Table(title="rounds", title_justify="left")
    for col in ("round", "bytes up", "bytes down", *(f"{p} s" for p in PHASES), "agreement", "labels", "rejected",
                "peak RSS GiB"):
        table.add_column(col, justify="right")
    for r in summary["per_round"]:
        s = r["seconds"]
        agreement = r.get("mean_agreement")
        table.add_row(str(r["round"]), f"{r['bytes_up']:,}", f"{r['bytes_down']:,}",
                      *(f"{s[p]:.1f}" if p in s else "-" for p in PHASES),
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
