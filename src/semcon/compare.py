"""``semcon compare``: several methods on one setting, each in its own run directory, then one report.

The report's main table has one row per method: each quality metric as mean ± std over clients, bytes
up and down (measured from the ledgers), bytes relative to fedavg, wall time, energy, and the transfer
time a WAN link model implies. Plots: quality per round, cumulative bytes (log scale), seconds per phase.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from semcon.comm import ARCHS, arch_from_config, human_bytes, lora_parameters
from semcon.config import METHODS, RunConfig, averaging_problem

log = logging.getLogger(__name__)

METRICS = (("nll", "NLL ↓"), ("rouge_l", "ROUGE-L ↑"), ("cosine", "cosine ↑"), ("accuracy", "MMLU acc ↑"),
           ("exact_match", "GSM8K EM ↑"))


def plan(cfgs: dict[str, RunConfig]) -> tuple[list[str], dict[str, str]]:
    """Which methods can run on this setting, and why the others cannot."""
    runnable, skipped = [], {}
    for method, cfg in cfgs.items():
        if problem := averaging_problem(cfg):
            skipped[method] = problem
        else:
            runnable.append(method)
    return runnable, skipped


def client_scores(per_client: dict[str, dict[str, dict[str, float]]], metric: str) -> list[float]:
    """Per client, the metric averaged over the eval domains where it exists."""
    scores = []
    for per_domain in per_client.values():
        values = [m[metric] for m in per_domain.values() if metric in m]
        if values:
            scores.append(float(np.mean(values)))
    return scores


def mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def per_client_round(summary: dict) -> float:
    """Mean bytes (up + down) per client per communicating round."""
    rounds = [r for r in summary["per_round"] if r["bytes_up"] or r["bytes_down"]]
    total = sum(r["bytes_up"] + r["bytes_down"] for r in rounds)
    return total / max(len(rounds) * len(summary["clients"]), 1)


def analytic_ratio(cfg: RunConfig, summary: dict) -> str | None:
    """LoRA-FedAvg over semantic-consensus bytes for this run's model, from its shapes and the measured
    mean answer bytes (so the report puts the analytic figure beside the measured one)."""
    up = [r for r in summary["per_round"] if r.get("prompts")]
    if not up:
        return None
    model = cfg.clients[0].model
    try:
        from semcon.assets import resolve_model

        arch = ARCHS[model] if model in ARCHS else arch_from_config(resolve_model(model))
    except Exception:  # noqa: BLE001 - a hub id without network: no analytic figure
        return None
    lora = cfg.train.lora
    adapter = 2 * lora_parameters(arch, lora.r, lora.target_modules) * 4  # fp32 adapters up and down
    text = np.mean([(r["bytes_up"] + r["bytes_down"]) / max(len(r.get("accepted", [])), 1) for r in up])
    return (f"{adapter / text:,.0f}x per client per round (fp32 adapter {human_bytes(adapter / 2)} each way vs "
            f"{human_bytes(text)} of encoded text up + down, this run's mean)")


def write_report(out: Path, summaries: dict[str, dict], cfgs: dict[str, RunConfig], skipped: dict[str, str]) -> Path:
    """``out/report.md`` and its PNG plots."""
    plots = make_plots(out, summaries)
    fedavg_bytes = (summaries["fedavg"]["bytes_up"] + summaries["fedavg"]["bytes_down"]) if "fedavg" in summaries else None
    lines = ["# semcon compare", "",
             f"Setting: `{next(iter(cfgs.values())).name}`, {len(next(iter(cfgs.values())).clients)} clients, "
             f"{next(iter(cfgs.values())).rounds} consensus rounds. Quality is held-out, per client averaged over "
             "the eval domains, then mean ± std over clients (centralized: its one model).", ""]
    metrics = [(k, label) for k, label in METRICS
               if any(client_scores(s["eval_after"], k) for s in summaries.values())]
    head = ["method", *(label for _, label in metrics), "bytes up", "bytes down", "× fedavg bytes", "wall s",
            "modelled transfer s", "round s (compute + modelled)", "energy kWh"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, s in summaries.items():
        total = s["bytes_up"] + s["bytes_down"]
        transfer = sum(r.get("modelled_transfer_s") or 0 for r in s["per_round"])
        compute = sum(sum(r["seconds"].values()) for r in s["per_round"])
        n_rounds = max(len(s["per_round"]), 1)
        rel = f"{total / fedavg_bytes:.2e}" if fedavg_bytes else "–"
        energy = f"{s['energy_kwh']:.2e}" if s.get("energy_kwh") else "not measured"
        row = [method, *(mean_std(client_scores(s["eval_after"], k)) for k, _ in metrics),
               human_bytes(s["bytes_up"]), human_bytes(s["bytes_down"]), rel, f"{s['seconds']:.0f}",
               f"{transfer:.1f}", f"{(compute + transfer) / n_rounds:.1f}", energy]
        lines.append("| " + " | ".join(row) + " |")
    for method, why in skipped.items():
        lines.append(f"| {method} | not applicable: {why} |")
    net = next(iter(cfgs.values())).network
    lines += ["", f"Transfer times are **modelled**, not measured: the in-process run moves bytes for free, so each "
              f"round's measured bytes are put through a link of {net.uplink_mbps:g} Mbit/s up, "
              f"{net.downlink_mbps:g} Mbit/s down and {net.latency_ms:g} ms latency per message "
              "(`network.*`), clients in parallel.", ""]
    methods_energy = {s.get("energy_method") for s in summaries.values()}
    lines += [f"Energy: {', '.join(sorted(methods_energy))}.", ""]
    if "semantic_consensus" in summaries and fedavg_bytes:
        sc, fa = summaries["semantic_consensus"], summaries["fedavg"]
        measured = fedavg_bytes / max(sc["bytes_up"] + sc["bytes_down"], 1)
        lines += ["## Communication", "",
                  f"- measured in this run: fedavg moved **{measured:,.0f}x** the bytes of semantic consensus "
                  f"({per_client_round(fa) / max(per_client_round(sc), 1):,.0f}x per client per round, up + down; "
                  "fedavg also averages once after the last training round)"]
        if ratio := analytic_ratio(cfgs["semantic_consensus"], sc):
            lines.append(f"- analytic for this model (`semcon comm`): {ratio}")
        lines.append("- for large models see `semcon comm` (Llama-3.1-405B, LoRA r=32 on q_proj,v_proj: about 1000x)")
        lines.append("")
    lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), "",
              "Run directories: " + ", ".join(f"[{m}]({m}/)" for m in summaries), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (out / "compare.json").write_text(json.dumps({"methods": list(summaries), "skipped": skipped}, indent=2))
    return path


def make_plots(out: Path, summaries: dict[str, dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, s in summaries.items():
        xs, ys = [], []
        for r in s["per_round"]:
            if r.get("eval_nll"):
                xs.append(r["round"])
                ys.append(np.mean([np.mean(list(d.values())) for d in r["eval_nll"].values()]))
        if xs:
            ax.plot(xs, ys, marker="o", label=method)
    ax.set(xlabel="round", ylabel="held-out NLL (mean over clients and domains)", title="quality per round")
    ax.legend()
    paths.append(_save(fig, out / "quality_per_round.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, s in summaries.items():
        rounds = [r["round"] for r in s["per_round"]]
        total = np.cumsum([r["bytes_up"] + r["bytes_down"] for r in s["per_round"]])
        if total[-1] > 0:
            ax.plot(rounds, np.maximum(total, 1), marker="o", label=method)
    ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="cumulative bytes (up + down, all clients)", title="communication")
    ax.legend()
    paths.append(_save(fig, out / "bytes_per_round.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    phases = sorted({p for s in summaries.values() for r in s["per_round"] for p in r["seconds"]})
    bottom = np.zeros(len(summaries))
    for phase in phases:
        values = np.array([sum(r["seconds"].get(phase, 0) for r in s["per_round"]) for s in summaries.values()])
        ax.bar(list(summaries), values, bottom=bottom, label=phase)
        bottom += values
    ax.set(ylabel="seconds", title="seconds per phase")
    ax.legend()
    paths.append(_save(fig, out / "seconds_per_phase.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def parse_methods(text: str | None) -> list[str]:
    methods = list(METHODS) if not text else [m.strip() for m in text.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in METHODS]:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return methods
