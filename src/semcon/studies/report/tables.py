"""The ablation's and the replay's tables: one row per cell and method, one per rule and round."""

from __future__ import annotations

import json
from pathlib import Path

from semcon.comm import human_bytes
from semcon.config import config_key
from semcon.provenance import describe
from semcon.studies.report.cells import budget_cell, md_table, over_seeds, paired, share_text
from semcon.studies.report.figures import axis_plot
from semcon.studies.report.markdown import provenance_lines
from semcon.studies.report.numbers import (
    BASELINE,
    attacker_share,
    client_mean,
    dig,
    honest_delta,
    honest_mean,
    label_quality,
    mean_expert_share,
    own_other,
    paired_differences,
    seed_mean,
)
from semcon.studies.stats import MIN_SEEDS


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
        cells = [dig(q, "consensus", "rouge_l"), dig(q, "consensus", "cosine"), dig(q, "random", "rouge_l"),
                 dig(q, "random", "cosine")]
        table.append([f"{r['rule']}{' (bound)' if r['bound'] else ''}", str(r["round"]), share_text(r["labelled"]),
                      *("–" if v is None else f"{v:.3f}" for v in cells),
                      *([share_text(sum(r["label_share"].get(n, 0.0) for n in attacks))] if attacks else []),
                      *(share_text(r["expert_share"].get(d)) for d in domains),
                      *(share_text(r["label_share"].get(c)) for c in clients)])
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


def clean_runs(cell, method: str, cells: list) -> dict[int, dict]:
    """Per seed, the run of ``method`` in the cell that is ``cell`` with no attacker (same setting otherwise), if
    the ablation has one."""
    mine = config_key(cell.cfgs[method].model_copy(update={"adversaries": None}))
    return next((c.runs[method] for c in cells if not c.error and method in c.cfgs and
                 not c.cfgs[method].attackers and config_key(c.cfgs[method]) == mine), {})


def ablation_report(out: Path, axes: dict[str, list[str]], cells: list) -> Path:
    """``out/ablation.md``, ``ablation.json`` and ``ablation_<axis>.png``: one row per cell and method."""
    ever = {a for c in cells if not c.error for p in c.runs.values() for s in p.values() for a in s.get("attackers") or []}
    attacked = bool(ever)
    honest = lambda s: honest_mean(s, excluded=ever)  # noqa: E731
    head = ["cell", "method", "seeds", "bits/byte ↓", f"− {BASELINE} (paired)", "own ↓", "other ↓",
            "label ROUGE-L", "label cosine", "expert share", "steps / client", "bytes", "wall s"]
    head[7:7] = ["honest bits/byte ↓", "honest Δ (paired) ↓", "attacker share"] if attacked else []
    rows, record = [], []
    for cell in cells:
        if cell.error:
            rows.append([cell.name, f"failed: {cell.error}", *[""] * (len(head) - 2)])
            record.append({"cell": cell.name, "overrides": cell.overrides, "error": cell.error})
            continue
        for method, per_seed in cell.runs.items():
            clean = clean_runs(cell, method, cells)
            deltas = {seed: d for seed, s in per_seed.items() if seed in clean and (d := honest_delta(s, clean[seed]))}
            rule = cell.cfgs[method].consensus.rule if method == "semantic_consensus" else None
            label = method + (f" ({rule}{', a bound' if rule.startswith('oracle') else ''})" if rule else "")
            rows.append([cell.name, label, str(len(per_seed)), over_seeds(per_seed, client_mean), paired(cell.runs, method),
                         over_seeds(per_seed, lambda s: own_other(s, "bpb")[0]), over_seeds(per_seed, lambda s: own_other(s, "bpb")[1]),
                         *([over_seeds(per_seed, honest), over_seeds(deltas, lambda d: sum(d.values()) / len(d)),
                            over_seeds(per_seed, attacker_share, 2)] if attacked else []),
                         over_seeds(per_seed, lambda s: label_quality(s, "rouge_l")),
                         over_seeds(per_seed, lambda s: label_quality(s, "cosine")),
                         over_seeds(per_seed, mean_expert_share, 2), budget_cell(per_seed, 0),
                         human_bytes(seed_mean(per_seed, lambda s: s["bytes_up"] + s["bytes_down"])),
                         f"{seed_mean(per_seed, lambda s: s['seconds']):.0f}"])
            record.append({"cell": cell.name, "overrides": cell.overrides, "method": method, "rule": rule,
                           "bpb": [client_mean(s) for s in per_seed.values()],
                           "paired_to_local": paired_differences(cell.runs, method, "bpb")
                           if BASELINE in cell.runs and method != BASELINE else [],
                           "expert_share": [mean_expert_share(s) for s in per_seed.values()],
                           "honest_bpb": [honest(s) for s in per_seed.values()],
                           "honest_delta": deltas,
                           "attacker_share": [attacker_share(s) for s in per_seed.values()],
                           "seconds": [s["seconds"] for s in per_seed.values()]})
    panels = [("honest_bpb", "honest clients' bits per byte ↓"), ("attacker_share", "attackers' share of the labels")
              ] if attacked else [("bpb", "held-out bits per byte (client mean) ↓")]
    plots = [axis_plot(out, axis, axes, record, panels) for axis in axes]
    described = "; ".join(f"`{k}` ∈ {{{', '.join(v)}}}" for k, v in axes.items())
    lines = ["# semcon ablate", "", f"Axes: {described}. "
             "Each cell is a compare (its own report.md in its folder). Bits per byte: held-out, client-mean, mean over "
             f"seeds ± 95% t-interval from {MIN_SEEDS} seeds on (fewer: their range); paired: (method − local) with the "
             "seed as the replicate, as in each cell's report; own/other: each client's own domain vs the mean of the others; "
             "label ROUGE-L / cosine: the pseudo-labels against the held-back references, mean over rounds; expert "
             "share: of each domain's labels, the share that is its expert's answer; honest bits/byte: the mean over "
             f"the clients that attack in no cell ({', '.join(sorted(ever)) or 'none'} left out of every cell, so "
             "that all cells average the same clients); honest Δ: per seed, the mean over the clients that do not attack "
             "in the run of their bits per byte minus their own in the cell with no attacker at that seed (paired: "
             "for attackers that rotate across clients); attacker share: the attackers' share of all labels, mean over rounds; "
             "steps / client: optimizer steps of a client over the run (the clients' range in brackets). "
             "A run that started from an "
             "earlier cell's round 0 and round-1 answers (same seed, only the server's consensus differs) counts "
             "round 0's seconds as that run spent them and round 1's answers as free; a baseline that never reads "
             "the consensus is run once and copied.", "",
             *provenance_lines({f"{c.name}: {m}": ps for c in cells if not c.error for m, ps in c.runs.items()}),
             *md_table(head, rows), "", *(f"![{p.stem}]({p.name})" for p in plots if p), ""]
    (out / "ablation.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    path = out / "ablation.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
