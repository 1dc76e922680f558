"""The output-privacy audit's measurements, taken beside a client after its training (``privacy.canaries``).

The client does its member's work; this module only reads what it holds (its model, what it sent and received)
to count where the planted canaries show up and how exposed each is (``privacy.py`` has the pure parts).
"""

from __future__ import annotations

from semcon.data.canaries import canaries
from semcon.member.client import Client
from semcon.member.generate import generate
from semcon.member.privacy import candidates, exposure, found


def privacy_report(client: Client) -> dict:
    """How many canaries ``client``'s last upload, the pseudo-labels it received and its own greedy completions
    of each canary's question hold, and each canary's exposure under its model (for parameter averaging: the
    averaged adapter, once it has it); with the upload filter, what it withheld and redacted. {} without an audit."""
    cfg, seed = client.settings.privacy, client.settings.seed
    planted = canaries(cfg.canaries, seed)
    if not planted:
        return {**client.filtered} if cfg.filter else {}
    received = list(client.pseudo.labels.values()) if client.pseudo is not None else []
    bb = client.backbone
    with bb.active(client.name) as model:
        outs = generate(model, client.fmt, [c.question for c in planted], max_new_tokens=32,
                        batch_size=client.settings.gen_batch_size, device=bb.device, dtype=bb.dtype)
    exposures = []
    for c in planted:
        codes = [c.code, *candidates(c, cfg.candidates, seed)]
        examples, _ = client.tokenize_rows([(c.question, c.sentence(code), 1.0) for code in codes])
        loglik = -client.response_nll(examples)[0]
        exposures.append(round(exposure(loglik[0], loglik[1:]), 3))
    return {"uploaded": sum(any(found(c, t) for t in client.sent.values()) for c in planted),
            "received": sum(any(found(c, t) for t in received) for c in planted),
            "completed": sum(found(c, o.text) for c, o in zip(planted, outs)),
            "exposure": exposures, **(client.filtered if cfg.filter else {})}
