"""What a member sent and received, round by round, from a run directory: for a compliance review.

Read from the files the server kept (the ledger's byte counts of every message, the decoded uploads, the
pseudo-labels broadcast, the reports in ``metrics.jsonl``), so it shows what left each member, not what the
member says it sent. Nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from textwrap import indent

from semcon.config import ConfigError
from semcon.rounds.rundir import RunDir, RunDirError

# What each kind of ledger message carries, in words (protocol.py defines them).
CARRIES = {
    "config": "the run's resolved config (once)",
    "public": "the public prompts (once)",
    "upload": "its answer texts, with per answer whether it ended by itself, its confidence and any competence",
    "download": "the round's pseudo-labels: prompt id, text, whether it was cut (not who wrote it)",
    "adapter": "LoRA adapter tensors (the weights themselves)",
    "invalid": "bytes that did not decode (rejected, not used)",
}


@dataclass
class Exchange:
    """One member's traffic in one round: the ledger's messages, and their contents where kept."""

    round: int
    client: str
    sent: list[dict] = field(default_factory=list)  # ledger rows, direction up
    received: list[dict] = field(default_factory=list)  # ledger rows, direction down
    answers: list[dict] = field(default_factory=list)  # uploads/round_NN.jsonl rows of this client
    labels: list[dict] = field(default_factory=list)  # pseudo_labels/round_NN.jsonl rows (the broadcast)
    report: dict = field(default_factory=dict)  # the numbers it reported: training losses and tokens, reference scores
    prompts: dict[str, str] = field(default_factory=dict)  # prompt id -> the public prompt's text (public.jsonl)


def exchanges(path: Path, client: str | None = None, round: int | None = None) -> list[Exchange]:
    """Every (round, client) exchange of the run in ``path``, optionally of one client or round; RunDirError
    for a directory that is no run or a client or round it does not have."""
    path, run = Path(path), RunDir(path)
    try:
        cfg = run.config()
    except (ConfigError, OSError) as e:
        raise RunDirError(f"{path}: not a run directory ({e})") from None
    names = [c.name for c in cfg.clients]
    if client is not None and client not in names:
        raise RunDirError(f"{path}: no client {client!r} (clients: {', '.join(names)})")
    if not (path / "ledger.jsonl").is_file():
        raise RunDirError(f"{path}: no ledger.jsonl, so nothing to inspect")
    ledger = [r for r in run.rows("ledger.jsonl") if r.get("client") in names]
    rounds = sorted({r["round"] for r in ledger})
    if round is not None and round not in rounds:
        raise RunDirError(f"{path}: no round {round} in its ledger (rounds: {', '.join(map(str, rounds)) or 'none'})")
    rows = run.rows("metrics.jsonl")
    metrics = {r["round"]: r for r in rows if r.get("event", "round") == "round"}
    evaluations = [r for r in rows if r.get("event") == "eval"]  # sent after the last round
    prompts = {p.id: p.instruction for p in run.public_prompts(lambda: [])} if run.has_public() else {}
    out = []
    for t in [round] if round is not None else rounds:
        uploads, labels = run.kept_upload_rows(t), run.kept_labels(t)
        for name in [client] if client is not None else names:
            mine = [r for r in ledger if r["round"] == t and r["client"] == name]
            row = metrics.get(t, {})
            report = {key: row[key][name] for key in ("train_loss", "train_tokens", "reference")
                      if name in (row.get(key) or {})}
            if t == rounds[-1]:
                report |= {f"evaluation ({r['stage']})": r["metrics"] for r in evaluations if r.get("client") == name}
            out.append(Exchange(t, name, [r for r in mine if r["direction"] == "up"],
                                [r for r in mine if r["direction"] == "down"],
                                [r for r in uploads if r.get("client") == name],
                                labels if any(r["kind"] == "download" for r in mine) else [], report, prompts))
    return out


def describe(ex: Exchange) -> list[str]:
    """The exchange as plain lines: every message with its bytes, then every answer sent and label received
    in full, then the numbers reported."""
    lines = [f"round {ex.round} · {ex.client}"]
    for verb, rows in (("sent", ex.sent), ("received", ex.received)):
        for r in rows:
            lines.append(f"  {verb:<8} {r['kind']:<8} {r['encoded_bytes']:>9,} B on the wire ({r['raw_bytes']:,} B of "
                         f"text or tensors in it): {CARRIES.get(r['kind'], r['kind'])}")
    if not ex.sent and not ex.received:
        lines.append("  no message either way (not sampled, failed, or a method that never communicates)")
    if ex.answers:
        lines.append(f"  answers sent ({len(ex.answers)}):")
        for a in ex.answers:
            flags = [f"ended by itself: {'yes' if a.get('finished') else 'no (cut at the cap)'}"]
            if a.get("confidence") is not None:
                flags.append(f"confidence {a['confidence']:.3f}")
            flags += [f"competence {k} {v:.3f}" for k, v in sorted((a.get("competence") or {}).items())]
            if a.get("degenerate"):
                flags.append("the server found it degenerate")
            text = a.get("text") or "(blank: withheld by the upload filter, or no answer)"
            lines += [f"    {_prompt(ex, a['prompt_id'])}  " + " · ".join(flags), indent(text, " " * 6)]
    if ex.labels:
        lines.append(f"  pseudo-labels received ({len(ex.labels)}, the same broadcast to every member):")
        for lab in ex.labels:
            cut = "" if lab.get("finished", True) else "  [cut]"
            lines += [f"    {_prompt(ex, lab['prompt_id'])}{cut}", indent(lab["text"], " " * 6)]
    if ex.report:
        lines.append("  reported to the server (numbers only, not in the ledger's messages):")
        lines += [f"    {key}: {value}" for key, value in ex.report.items()]
    return lines


def _prompt(ex: Exchange, pid: str, width: int = 100) -> str:
    """A prompt id with its text on one line, clipped."""
    text = " ".join(ex.prompts.get(pid, "").split())
    return f"{pid} {text[:width - 1] + '…' if len(text) > width else text!r}" if text else pid
