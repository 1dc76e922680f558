"""The run directory: resolved config, metrics, communication ledger, pseudo-labels, summary, adapters."""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from semcon.config import RunConfig
from semcon.protocol import Message, raw_bytes


class RunDir:
    """Append-only files of one run; every row is one JSON line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path, cfg: RunConfig) -> RunDir:
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        for stale in ("checkpoints", "pseudo_labels"):  # an earlier run in this directory must not be resumed
            shutil.rmtree(run.path / stale, ignore_errors=True)
        (run.path / "summary.json").unlink(missing_ok=True)
        (run.path / "pseudo_labels").mkdir()
        for name in ("metrics.jsonl", "ledger.jsonl"):
            (run.path / name).write_text("")
        (run.path / "config.yaml").write_text(cfg.dump(), encoding="utf-8")
        (run.path / "run_id").write_text(uuid.uuid4().hex[:12])
        return run

    @property
    def run_id(self) -> str:
        """A random id of this run; clients key their saved state by it (Flower node ids change)."""
        return (self.path / "run_id").read_text().strip()

    def rewind(self, next_round: int) -> None:
        """Drop what a crashed session wrote after its last completed round, so that resuming from
        ``next_round`` appends exactly what an uninterrupted run would have."""
        for name in ("ledger.jsonl", "metrics.jsonl"):
            keep = [r for r in self.rows(name) if r.get("event", "round") == "round" and r["round"] < next_round]
            (self.path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep),
                                          encoding="utf-8")
        for path in (self.path / "pseudo_labels").glob("round_*.jsonl"):
            if int(path.stem.split("_")[1]) >= next_round:
                path.unlink()
        (self.path / "summary.json").unlink(missing_ok=True)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.path / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def metric(self, event: str, **fields: Any) -> None:
        self._append("metrics.jsonl", {"event": event, **fields})

    def ledger(self, round: int, client: str, direction: str, msg: Message, encoded: bytes) -> dict[str, Any]:
        """Record one encoded message; sizes come from the actual payload."""
        return self.ledger_row(round, client, direction, msg.kind, raw_bytes(msg), len(encoded))

    def ledger_row(self, round: int, client: str, direction: str, kind: str, raw: int, encoded: int) -> dict[str, Any]:
        row = {"round": round, "client": client, "direction": direction, "kind": kind,
               "raw_bytes": raw, "encoded_bytes": encoded}
        self._append("ledger.jsonl", row)
        return row

    def pseudo_labels(self, round: int, labels: list) -> Path:
        path = self.path / "pseudo_labels" / f"round_{round:02d}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for lab in labels:
                f.write(json.dumps(asdict(lab), ensure_ascii=False) + "\n")
        return path

    @property
    def adapters(self) -> Path:
        return self.path / "adapters"

    def summary(self, data: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")

    def rows(self, name: str) -> list[dict[str, Any]]:
        path = self.path / name
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
