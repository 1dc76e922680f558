"""The frontier between expertise and capture (docs/results/robustness/frontier/): a committed run's kept uploads
replayed under the recommended rule with each defence setting, against each attack, with no training.

For each attack and defence, round 1 (whose answers do not depend on the rule): the attackers' share of the labels
against the honest experts' share of their own domains' prompts labelled with their own answers. One figure per
attack, a point per defence setting, so a user sees what each defence costs in expertise.

    python scripts/frontier.py [RUN_DIR] [OUT]   (defaults: docs/results/replay/runs/run, docs/results/robustness/frontier)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from semcon.provenance import describe, provenance  # noqa: E402
from semcon.studies.replay import load_kept, replay  # noqa: E402

RUN = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/replay/runs/run")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/results/robustness/frontier")
GATED = "gated:signal=knn,gate=0.75"  # the recommended rule (configs/gated.yaml)
DEFENCES = {  # label -> the rule's settings beside GATED's
    "none": "",
    "tie_break random": "tie_break=random",
    "corroborate 0.5": "corroborate=0.5",
    "corroborate 0.7": "corroborate=0.7",
    "max_share 0.3": "max_share=0.3",
    "max_share 0.25": "max_share=0.25",
    "support 0.5": "support=0.5",
    "sybil_merge 0.995": "sybil_merge=0.995",
    "reputation 10": "reputation=10",
    "tie_break random + corroborate 0.5 + sybil_merge": "tie_break=random,corroborate=0.5,sybil_merge=0.995",
}
ATTACKS = {  # label -> --attack specs; chat is the first attacker, medicine the second
    "no attacker": [],
    "random ×1": ["chat:kind=random"],
    "random ×2": ["medicine:kind=random", "chat:kind=random"],
    "plausible_wrong ×2": ["medicine:kind=plausible_wrong", "chat:kind=plausible_wrong"],
    "sybil ×2": ["medicine:kind=sybil", "chat:kind=sybil"],
    "inflate_competence on all (naive) ×1": ["chat:kind=inflate_competence,answers=constant"],
    "inflate_competence on gsm8k ×1": ["chat:kind=inflate_competence,answers=constant,target=gsm8k,confidence=max"],
    "inflate_competence on gsm8k, honest confidence ×1": [
        "chat:kind=inflate_competence,answers=constant,target=gsm8k,confidence=honest"],
    "sybils splitting gsm8k ×2": ["medicine:kind=sybil,target=gsm8k,part=1/2", "chat:kind=sybil,target=gsm8k,part=2/2"],
    "expert_liar ×1": ["chat:kind=expert_liar"],
    "expert_liar ×2": ["medicine:kind=expert_liar", "chat:kind=expert_liar"],
    "claim_finished ×1": ["chat:kind=claim_finished"],
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    kept = load_kept(RUN)
    embedder = kept.embedder()
    rules = {label: GATED + ("," + extra if extra else "") for label, extra in DEFENCES.items()}
    rows = []
    for attack, specs in ATTACKS.items():
        attackers = {s.partition(":")[0] for s in specs}
        for r in replay(RUN, list(rules.values()), attackers=specs, embedder=embedder):
            if r["round"] != 1:
                continue
            honest = {d: v for d, v in r["expert_labelled"].items() if kept.experts[d] not in attackers}  # all: none
            rows.append({"attack": attack, "defence": next(k for k, v in rules.items() if v == r["rule"]),
                         "attacker_share": round(sum(r["label_share"].get(a, 0.0) for a in attackers), 4),
                         "expert_labelled": round(sum(honest.values()) / len(honest), 4), "labelled": r["labelled"],
                         "rouge_l": (r["quality"] or {}).get("consensus", {}).get("rouge_l"), "per_domain": honest})
        print(f"{attack}: done", file=sys.stderr, flush=True)
    (OUT / "frontier.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    figures(rows)
    (OUT / "summary.md").write_text(summary(rows), encoding="utf-8")


def figures(rows: list[dict]) -> None:
    """One figure per attack: a point per defence, attackers' share against the honest experts' share."""
    for attack in ATTACKS:
        mine = [r for r in rows if r["attack"] == attack]
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        at: dict[tuple[float, float], list[str]] = {}  # defences that land on one point share one label
        for r in mine:
            at.setdefault((r["attacker_share"], r["expert_labelled"]), []).append(r["defence"])
        for (x, y), names in at.items():
            ax.scatter(x, y, s=30)
            ax.annotate("\n".join(names), (x, y), fontsize=6.5, xytext=(4, 2), textcoords="offset points")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("attackers' share of the round's labels (lower is better)")
        ax.set_ylabel("honest experts' own-domain prompts labelled\nwith their answer (higher is better)")
        ax.set_title(f"{attack}: gated on knn, gate 0.75, round 1 (replay)", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(OUT / f"frontier-{slug(attack)}.png", dpi=110)
        plt.close(fig)


def summary(rows: list[dict]) -> str:
    lines = [f"Tabulated by `python scripts/frontier.py` with {describe(provenance())}. Replay of "
             f"`{RUN}` round 1 under `{GATED}` and each defence; no training. Each cell: attackers' share of the "
             "labels / honest experts' own-domain prompts labelled with their own answer (mean over the honest "
             "experts' domains).", ""]
    defences = list(DEFENCES)
    lines += ["| attack | " + " | ".join(defences) + " |", "|---|" + "---|" * len(defences)]
    cell = {(r["attack"], r["defence"]): r for r in rows}
    for attack in ATTACKS:
        lines.append(f"| {attack} | " + " | ".join(
            f"{100 * cell[attack, d]['attacker_share']:.0f}% / {100 * cell[attack, d]['expert_labelled']:.0f}%"
            for d in defences) + " |")
    lines += ["", "Figures: " + ", ".join(f"[{a}](frontier-{slug(a)}.png)" for a in ATTACKS) + "."]
    return "\n".join(lines) + "\n"


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").replace("--", "-")


if __name__ == "__main__":
    main()
