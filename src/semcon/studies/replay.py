"""``semcon verify`` and ``semcon replay``: a run's consensus recomputed from the uploads it kept, no model needed.

Both read the kept uploads (``RunDir.kept_uploads``) and call the server's own ``server.choose``. Verify recomputes every round
under the run's config and compares with ``pseudo_labels/``; replay recomputes under other rules (and, for
robustness, with one client's upload turned into an attacker's) and measures the labels: this is how a user
picks a rule before paying for training runs. Round 1's uploads do not depend on the rule (they follow round
0, private data only); later rounds' uploads came from clients trained on this run's own labels.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from semcon.config import AttackConfig, ConfigError, RunConfig, apply_overrides, load_config
from semcon.consensus import REFERENCE_BOUND, load_rule, rule_inputs
from semcon.coordinator.server import Answers, Choice, choose, expert_labelled, pseudo_labels, round_metrics
from semcon.data import Prompt, build_splits, experts_of
from semcon.embed import Embedder
from semcon.member.attacks import attack, described
from semcon.member.competence import quantize
from semcon.protocol import Upload, digest
from semcon.rounds.rundir import RunDir, RunDirError


@dataclass
class Kept:
    """What a run kept of its consensus rounds: config, prompts, each round's valid uploads, the experts."""

    cfg: RunConfig
    prompts: list[Prompt]
    uploads: dict[int, dict[str, Upload]]  # round -> client -> upload
    experts: dict[str, str]
    path: Path

    def asked(self, t: int) -> list[Prompt]:
        """The prompts of round ``t``."""
        return self.cfg.public.asked(self.prompts, t)

    def embedder(self) -> Remembering:
        return Remembering(Embedder(self.cfg.consensus.embedder, batch_size=self.cfg.consensus.embed_batch_size))


class Remembering:
    """The embedder, each text embedded once: replay embeds the same answers under every rule."""

    def __init__(self, embedder: Embedder):
        self.embedder, self.dim, self.seen = embedder, embedder.dim, {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        if new := sorted({t for t in texts if t not in self.seen}):
            self.seen.update(zip(new, self.embedder(new)))
        return np.stack([self.seen[t] for t in texts]) if texts else np.zeros((0, self.dim), dtype=np.float32)


def load_kept(path: Path, need_experts: bool = True) -> Kept:
    """A run directory's kept uploads; RunDirError (one line) when it has none to recompute from. The experts
    are read when ``need_experts`` or the run's own rule needs them (oracle_expert)."""
    run = RunDir(path)
    try:
        cfg = run.config()
    except ConfigError as e:
        raise RunDirError(f"{path}: cannot read its config ({e})") from None
    if cfg.method != "semantic_consensus":
        raise RunDirError(f"{path}: a {cfg.method} run exchanges no answers: nothing to recompute")
    if not (rounds := run.kept_rounds()):
        raise RunDirError(f"{path}: no uploads/round_NN.jsonl (a run from before semcon kept its uploads, or "
                          "no consensus round finished)")
    if not run.has_public():
        raise RunDirError(f"{path}: no public.jsonl")
    prompts = run.public_prompts(lambda: [])
    experts = experts_of(cfg)
    if (need_experts or cfg.consensus.rule == "oracle_expert") and not experts:  # iid / dirichlet: the expert holds the most private rows of a domain
        experts = experts_of(cfg, build_splits(cfg, prompts))
    return Kept(cfg, prompts, {t: run.kept_uploads(t) for t in rounds}, experts, run.path)


def verify(path: Path) -> tuple[int, str | None]:
    """Recompute every round's pseudo-labels from the kept uploads with the run's config and embedder: the
    number of rounds checked and the first difference (None: every round matches). Each kept upload is also
    checked against the digest of what arrived (the ledger)."""
    kept = load_kept(path, need_experts=False)
    run = RunDir(kept.path)
    digests = {(r["round"], r["client"]): r.get("digest") for r in run.rows("ledger.jsonl")
               if r.get("direction") == "up" and r.get("kind") == "upload"}
    embedder, reputation = kept.embedder(), None
    for t, uploads in sorted(kept.uploads.items()):
        for name, upload in uploads.items():
            if digests.get((t, name)) != digest(upload):
                return t, (f"round {t}: the kept upload of client {name!r} (uploads/round_{t:02d}.jsonl) differs "
                           "from what arrived (its digest in ledger.jsonl)")
        picked, redone = recompute(kept, t, uploads, kept.cfg, embedder, reputation)
        labels, reputation = {lab.prompt_id: lab for lab in redone}, picked.reputation
        stored = {r["prompt_id"]: r for r in run.kept_labels(t)}
        for p in kept.asked(t):
            mine, theirs = labels.get(p.id), stored.get(p.id)
            if not same_label(mine and asdict(mine), theirs):
                said = f"the answer of client {theirs['client']!r}" if theirs else "no label"
                redone = f"the answer of client {mine.client!r}" if mine else "no label"
                return t, (f"round {t}, prompt {p.id}: pseudo_labels/round_{t:02d}.jsonl has {said}"
                           f"{' (text edited)' if mine and theirs and mine.client == theirs['client'] else ''}, "
                           f"recomputed: {redone}")
    return len(kept.uploads), None


AGREEMENT_TOLERANCE = 1e-4  # the embedder's floats differ in the last digits between CPU instruction sets


def same_label(mine: dict | None, stored: dict | None) -> bool:
    """The same pseudo-label row: every field equal, the agreement (a float the embedder computes) within
    ``AGREEMENT_TOLERANCE``, so that a run verifies on another CPU than the one it ran on."""
    if mine is None or stored is None:
        return mine is stored
    close = (mine["agreement"] is None) == (stored.get("agreement") is None) and (
        mine["agreement"] is None or abs(mine["agreement"] - stored["agreement"]) <= AGREEMENT_TOLERANCE)
    return close and {**mine, "agreement": None} == {**stored, "agreement": None}


def recompute(kept: Kept, t: int, uploads: dict[str, Upload], cfg: RunConfig, embedder,
              reputation: dict[str, float] | None = None) -> tuple[Choice, list]:
    """Round ``t``'s consensus over ``uploads`` under ``cfg``, as the server computed it (``reputation``: the
    weights carried from the round before): the choice and its labels."""
    prompts = kept.asked(t)
    answers = Answers.of(prompts, uploads, cfg.consensus.signals)
    picked = choose(cfg.consensus, prompts, answers, embedder, kept.experts, (cfg.seed % 2**32, t), reputation)
    return picked, pseudo_labels(prompts, picked)


RULE_SPEC = re.compile(r"^\s*(?P<rule>[\w.]+(?::\w+)?)\s*(?::(?P<settings>.*=.*))?$")


def parse_rule(spec: str) -> tuple[str, str, list[str]]:
    """``RULE[:key=value,...]`` as a label, the rule and ``consensus.*`` overrides. RULE is a rule's name or your
    own as ``package.module:function`` (a colon with no ``=`` after it)."""
    if not (m := RULE_SPEC.match(spec)):
        raise ConfigError(f"--rule {spec!r}: not NAME[:key=value,...] or package.module:function[:key=value,...]")
    sets = [f"consensus.rule={m['rule']}"]
    for item in filter(None, (part.strip() for part in (m["settings"] or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--rule {spec!r}: {item!r} is not key=value")
        sets.append(f"consensus.{key.strip().removeprefix('consensus.')}={value.strip()}")
    return spec, m["rule"], sets


def parse_attack(spec: str) -> tuple[str, AttackConfig]:
    """``CLIENT[:kind=K,answers=constant,text=...]`` as the client and its attack (default kind:
    inflate_competence)."""
    client, _, rest = spec.partition(":")
    fields = {"kind": "inflate_competence"}
    fields |= dict(item.split("=", 1) for item in filter(None, rest.split(",")) if "=" in item)
    try:
        return client.strip(), AttackConfig(**fields)
    except ValueError as e:
        raise ConfigError(f"--attack {spec!r}: {str(e).splitlines()[0]}") from None


def replay(path: Path, rules: list[str], sets: list[str] = (), attackers: list[str] = (),
           embedder: Remembering | None = None) -> list[dict]:
    """One row per rule and round: the labels' quality against the held-back references, the share of
    prompts labelled, each domain's expert share and each client's share of the labels. ``sets``: consensus
    overrides for every rule; ``attackers``: ``CLIENT[:kind=K,...]``, clients whose kept uploads are replayed as an
    attacker's; ``embedder``: one to share between calls (each text embedded once)."""
    kept = load_kept(path)
    tree = kept.cfg.model_dump(mode="json")
    bad = [s for s in sets if not s.startswith("consensus.")]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: replay recomputes the consensus only, so only consensus.* keys apply")
    attacks = dict(parse_attack(a) for a in attackers)
    if unknown := sorted(set(attacks) - {c.name for c in kept.cfg.clients}):
        raise ConfigError(f"--attack: no client {unknown[0]!r} in this run")
    embedder, out = embedder or kept.embedder(), []
    for spec in rules:
        reputation = None
        label, rule, rule_sets = parse_rule(spec)
        if reads_competence(rule) and not kept.cfg.consensus.signals:
            raise ConfigError(f"--rule {spec!r} reads competence, and this run's uploads carry none (it ran with "
                              "consensus.competence: none): replay it on a run made with consensus.competence: knn")
        # --set is for every rule, like the run's own settings: a rule that does not read one leaves it out
        cfg = load_config(tree=apply_overrides(copy.deepcopy(tree), list(sets)), overrides=rule_sets, check_files=False)
        if cfg.consensus.signals != kept.cfg.consensus.signals:
            raise ConfigError(f"--rule {spec!r}: the run's uploads carry competence {kept.cfg.consensus.signals or 'none'}; "
                              "replay reads those (consensus.competence cannot change after the fact)")
        own = {client: domain for domain, client in kept.experts.items()}  # an attacker's own domain, where it is the expert
        for t, uploads in sorted(kept.uploads.items()):
            uploads = {n: attack(_levels(u, cfg.consensus.competence_levels), attacks.get(n), kept.asked(t),
                                 seed=cfg.seed, own_domain=own.get(n)) for n, u in uploads.items()}
            picked, labels = recompute(kept, t, uploads, cfg, embedder, reputation)
            reputation = picked.reputation
            m = round_metrics(kept.asked(t), picked, labels, kept.experts, embedder)
            out.append({"rule": label, "round": t, "labelled": m["pseudo_labels"] / max(m["prompts"], 1),
                        "quality": m["answer_quality"], "expert_share": m["expert_share"],
                        "expert_labelled": expert_labelled(kept.asked(t), labels, kept.experts),
                        "label_share": m["label_share"], "attackers": sorted(attacks),
                        "attacks": {n: described(a) for n, a in sorted(attacks.items())},
                        "bound": cfg.consensus.oracle})
    return out


def reads_competence(rule: str) -> bool:
    """Whether ``rule`` reads the clients' competence; ConfigError (one line) for a rule that does not load."""
    if rule == REFERENCE_BOUND:
        return False
    try:
        return "competence" in rule_inputs(load_rule(rule), rule)[0]
    except ValueError as e:
        raise ConfigError(f"--rule: {e}") from None


def _levels(upload: Upload, levels: int | None) -> Upload:
    """The upload as a client quantizing its competence to ``levels`` would have sent it."""
    if levels is None:
        return upload
    comp = {s: {pid: float(quantize(np.array(v), levels)) for pid, v in values.items()}
            for s, values in upload.competence.items()}
    return Upload(upload.round, upload.client, upload.answers, upload.finished, upload.confidence, comp)
