"""Adversarial members: what an attacking client does to its own upload, and nothing else.

An attacker trains, answers and is evaluated as any client; only the message it sends differs. No other module
knows attacks exist: the server sees an upload like any other, which is the point of measuring them.
"""

from __future__ import annotations

from dataclasses import replace

from semcon.config import AttackConfig
from semcon.protocol import Upload


def attack(upload: Upload, cfg: AttackConfig | None) -> Upload:
    """The upload an attacking client sends instead of ``upload`` (``upload`` itself without an attack)."""
    if cfg is None:
        return upload
    answers, finished, confidence = upload.answers, upload.finished, upload.confidence
    if cfg.answers == "constant":  # one fixed text, claimed finished and certain
        answers = dict.fromkeys(upload.answers, cfg.text)
        finished, confidence = dict.fromkeys(answers, True), dict.fromkeys(answers, 0.0)
    # inflate_competence: the highest number on every prompt and signal
    competence = {signal: dict.fromkeys(values, 1.0) for signal, values in upload.competence.items()}
    return replace(upload, answers=answers, finished=finished, confidence=confidence, competence=competence)
