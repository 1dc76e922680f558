"""The run directory: resolved config, metrics, communication ledger, pseudo-labels, summary, adapters.

Nothing of a user's is destroyed: a run claims its directory only when it is new, empty, or an earlier
semcon directory the user agreed to overwrite. Every file is written so that a crash leaves either the
old or the new version, or an appended row cut short, which ``resume`` drops.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semcon.config import LOCAL_PLUS, METHODS, ConfigError, RunConfig, load_config
from semcon.data import Prompt
from semcon.protocol import Upload, uploads_from_rows

log = logging.getLogger(__name__)

# The plots of a report (a compare's, or `semcon report` of one run), each NAME.png next to report.md.
PLOT_NAMES = ("quality_per_round", "pseudo_label_quality", "bytes_per_round", "seconds_per_phase")
# What semcon writes into a run directory and into a compare directory; --overwrite removes these only.
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "ledger.jsonl", "pseudo_labels", "uploads", "replay", "checkpoints", "summary.json",
               "adapters", "run_id", "flower.json", "flower", "nodes", "stopped.txt", "public.jsonl", "tensorboard",
               "wandb", "report.md", *(f"{name}.png" for name in PLOT_NAMES))
COMPARE_ENTRIES = ("report.md", "compare.json", *(f"{name}.png" for name in PLOT_NAMES))


class RunDirError(ValueError):
    """A run directory that cannot be used or read, phrased as one line naming it (exit code 2)."""


def finished_run(where: Path) -> tuple[RunConfig, dict[str, Any]]:
    """A finished run's resolved config and summary, or RunDirError naming what is missing."""
    run = RunDir(where)
    if not run.finished():
        raise RunDirError(f"{where}: the run has not finished (no summary.json); `semcon resume {where}` first")
    try:
        return run.config(), run.read_summary()
    except (ConfigError, ValueError) as e:
        raise RunDirError(f"{where}: cannot read it ({e})") from None


def kind_of(path: Path) -> str | None:
    """'run' or 'compare' for a directory semcon wrote, else None."""
    if (path / "run_id").is_file() and (path / "config.yaml").is_file():
        return "run"
    if (path / "compare.json").is_file():
        return "compare"
    return None


def default_out(cfg: RunConfig) -> Path:
    """runs/NAME-TIME: where a run goes when no --out is given."""
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def claim(path: Path, overwrite: bool = False) -> Path:
    """Make ``path`` ready for new output without destroying anything the user did not ask to replace:
    a new or empty directory, or an earlier semcon run or compare directory when ``overwrite`` (then only
    semcon's own entries are removed). Anything else raises RunDirError naming the directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a directory: choose another --out")
    if path.is_dir() and any(path.iterdir()):
        kind = kind_of(path)
        if kind is None:
            raise RunDirError(f"{path} is not empty and holds no semcon run: choose a new or empty --out")
        if not overwrite and not never_started(path):
            hint = f", or `semcon resume {path}` to continue it" if kind == "run" else ""
            raise RunDirError(f"{path} holds an earlier semcon {kind}: pass --overwrite to replace it{hint}")
        remove_entries(path, kind)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"{path}: cannot write there ({e.strerror or e})") from None
    return path


def never_started(path: Path) -> bool:
    """Whether ``path`` is an in-process run that stopped before completing any round (bad data, say): nothing in
    it is worth keeping, so the same command may use the folder again without --overwrite."""
    return kind_of(path) == "run" and not any((path / name).exists() for name in (
        "summary.json", "flower.json", "checkpoints/state.json", "checkpoints/state.prev.json"))


def remove_entries(path: Path, kind: str) -> None:
    """Remove what semcon wrote into ``path``; in a compare directory also the run directories
    ``<method>/seed-<S>/`` (or an older ``<method>/``), and a method folder only once it is empty."""
    names = list(RUN_ENTRIES if kind == "run" else COMPARE_ENTRIES)
    if kind == "compare":
        for method in (path / m for m in (*METHODS, LOCAL_PLUS) if (path / m).is_dir() and not (path / m).is_symlink()):
            if kind_of(method) == "run":
                names.append(method.name)
                continue
            for seed in method.glob("seed-*"):
                if not seed.is_symlink() and seed.is_dir() and (kind_of(seed) == "run" or not any(seed.iterdir())):
                    shutil.rmtree(seed)
            if not any(method.iterdir()):
                method.rmdir()
    for name in names:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of ``path``. A last row cut short (a crash while appending) is dropped with a warning;
    a damaged row elsewhere raises RunDirError naming the file and line."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):  # no newline after it: the append was cut
                log.warning("%s: dropped the last row, cut short by a crash", path)
                break
            raise RunDirError(f"{path}:{i}: damaged row ({e.msg})") from None
        if not isinstance(row, dict):
            raise RunDirError(f"{path}:{i}: a row must be a JSON object")
        rows.append(row)
    return rows


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


class RunDir:
    """Append-only files of one run; every row is one JSON line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.mirror: Callable[[dict[str, Any]], None] | None = None  # also shows each metrics row elsewhere

    @classmethod
    def create(cls, path: Path, cfg: RunConfig, overwrite: bool = False) -> RunDir:
        """A new run in ``path`` (see ``claim`` for what may already be there)."""
        run = cls(claim(path, overwrite))
        (run.path / "pseudo_labels").mkdir()
        (run.path / "uploads").mkdir()
        for name in ("metrics.jsonl", "ledger.jsonl"):
            (run.path / name).write_text("")
        run.write_config(cfg)
        (run.path / "run_id").write_text(uuid.uuid4().hex[:12])
        return run

    # What the run is: its resolved config, and its summary once it finished.

    def config(self, overrides: list[str] | None = None, check_files: bool = False) -> RunConfig:
        """The resolved ``config.yaml`` (ConfigError naming it). Settings its rule does not read are left out:
        folders from before semcon refused them still load."""
        return load_config(self.path / "config.yaml", overrides, check_files=check_files, written=True)

    def config_tree(self) -> dict[str, Any]:
        """``config.yaml`` as written, unvalidated (what a transport forwards and amends)."""
        return yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))

    def write_config(self, cfg: RunConfig | dict[str, Any]) -> None:
        text = cfg.dump() if isinstance(cfg, RunConfig) else yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
        (self.path / "config.yaml").write_text(text, encoding="utf-8")

    def finished(self) -> bool:
        return (self.path / "summary.json").is_file()

    def read_summary(self) -> dict[str, Any]:
        return json.loads((self.path / "summary.json").read_text(encoding="utf-8"))

    def summary(self, data: dict[str, Any]) -> None:
        write_atomic(self.path / "summary.json", json.dumps(data, indent=2, ensure_ascii=False))

    def clear_summary(self) -> None:
        (self.path / "summary.json").unlink(missing_ok=True)

    # What the rounds kept: the public prompts, each round's accepted uploads and pseudo-labels.

    def kept_rounds(self) -> list[int]:
        """The rounds whose accepted uploads the run kept (``uploads/round_NN.jsonl``)."""
        return sorted(int(f.stem.removeprefix("round_")) for f in (self.path / "uploads").glob("round_*.jsonl")
                      if f.stem.removeprefix("round_").isdigit())

    def kept_upload_rows(self, round: int) -> list[dict[str, Any]]:
        """Round ``round``'s kept upload rows (``protocol.upload_rows``; none: [])."""
        path = self.path / "uploads" / f"round_{round:02d}.jsonl"
        return read_rows(path) if path.is_file() else []

    def kept_uploads(self, round: int) -> dict[str, Upload]:
        """Round ``round``'s accepted uploads, as the server accepted them."""
        return uploads_from_rows(round, self.kept_upload_rows(round))

    def kept_labels(self, round: int) -> list[dict[str, Any]]:
        """Round ``round``'s pseudo-label rows (none: [])."""
        path = self.path / "pseudo_labels" / f"round_{round:02d}.jsonl"
        return read_rows(path) if path.is_file() else []

    def has_public(self) -> bool:
        return (self.path / "public.jsonl").is_file()

    @property
    def run_id(self) -> str:
        """A random id of this run; clients key their saved state by it (Flower node ids change)."""
        return (self.path / "run_id").read_text().strip()

    def rewind(self, next_round: int) -> None:
        """Drop what a crashed session wrote after its last completed round, so that resuming from
        ``next_round`` appends exactly what an uninterrupted run would have. Everything is read and
        checked before anything is changed."""
        keep = {name: [r for r in self.rows(name) if r.get("event", "round") == "round"
                       and isinstance(r.get("round"), int) and r["round"] < next_round]
                for name in ("ledger.jsonl", "metrics.jsonl")}
        stale = []
        for path in [*(self.path / "pseudo_labels").glob("round_*.jsonl"), *(self.path / "uploads").glob("round_*.jsonl")]:
            number = path.stem.removeprefix("round_")
            if not number.isdigit():
                raise RunDirError(f"{path}: not a file of semcon's (round_NN.jsonl)")
            if int(number) >= next_round:
                stale.append(path)
        for name, rows in keep.items():
            write_atomic(self.path / name, jsonl(rows))
        for path in stale:
            path.unlink()
        (self.path / "summary.json").unlink(missing_ok=True)

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.path / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def metric(self, event: str, **fields: Any) -> None:
        row = {"event": event, **fields}
        self._append("metrics.jsonl", row)
        if self.mirror is not None:
            self.mirror(row)

    def ledger(self, row: dict[str, Any]) -> dict[str, Any]:
        """Append one row of the communication ledger (``protocol.ledger_row`` makes it from the bytes)."""
        self._append("ledger.jsonl", row)
        return row

    def pseudo_labels(self, round: int, labels: list) -> Path:
        path = self.path / "pseudo_labels" / f"round_{round:02d}.jsonl"
        write_atomic(path, jsonl([asdict(lab) for lab in labels]))
        return path

    def uploads(self, round: int, rows: list[dict[str, Any]]) -> Path:
        """The round's decoded, validated uploads, one row per answer (``semcon verify`` and ``replay`` read them)."""
        folder = self.path / "uploads"
        folder.mkdir(exist_ok=True)
        path = folder / f"round_{round:02d}.jsonl"
        write_atomic(path, jsonl(rows))
        return path

    def public_prompts(self, draw: Callable[[], list[Prompt]]) -> list[Prompt]:
        """The run's public prompts: ``public.jsonl`` when a session wrote it, else ``draw()``, written there
        (the prompts a run answers never change on resume, even if the data files do)."""
        path = self.path / "public.jsonl"
        if path.is_file():
            return [Prompt(r["id"], r["instruction"], r["domain"], r.get("reference")) for r in read_rows(path)]
        prompts = draw()
        write_atomic(path, jsonl([asdict(p) for p in prompts]))
        return prompts

    @property
    def adapters(self) -> Path:
        """The final adapters (``semcon export`` reads them)."""
        return self.path / "adapters"

    @property
    def client_checkpoints(self) -> Path:
        """Each client's adapter after every round: ``<client>/round_NN.safetensors``."""
        return self.path / "checkpoints" / "clients"

    def rows(self, name: str) -> list[dict[str, Any]]:
        return read_rows(self.path / name)

    # Checkpoint state: the newest in state.json, the one before in state.prev.json (client adapters of both
    # rounds are kept), so that a damaged state.json falls back one round instead of stopping the resume.
    @property
    def state_path(self) -> Path:
        return self.path / "checkpoints" / "state.json"

    def save_state(self, state: dict[str, Any]) -> None:
        path = self.state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            os.replace(path, path.with_name("state.prev.json"))
        write_atomic(path, json.dumps(state, ensure_ascii=False))
        if state.get("next_round") == 1:  # the state after round 0, kept for ``simulation.fork``
            write_atomic(path.with_name("state.round_00.json"), json.dumps(state, ensure_ascii=False))

    def can_fork(self) -> bool:
        """Whether the run kept what ``fork_from`` needs: round 0's state and adapters, and round 1's uploads."""
        return ((self.state_path.with_name("state.round_00.json")).is_file() and bool(self.kept_upload_rows(1))
                and any(self.client_checkpoints.glob("*/round_00.safetensors")))

    def fork_from(self, source: RunDir) -> None:
        """Start this run from ``source``'s round 0: its public prompts, round-0 rows, adapters and state."""
        shutil.copy2(source.path / "public.jsonl", self.path / "public.jsonl")
        for name in ("metrics.jsonl", "ledger.jsonl"):
            rows = [r for r in source.rows(name) if r.get("event", "round") == "round" and r.get("round") == 0]
            (self.path / name).write_text(jsonl(rows), encoding="utf-8")
        for adapter in source.client_checkpoints.glob("*/round_00.safetensors"):
            target = self.client_checkpoints / adapter.parent.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(adapter, target / adapter.name)
        state = source.state_path.with_name("state.round_00.json")
        self.save_state(json.loads(state.read_text(encoding="utf-8")))

    def has_state(self) -> bool:
        return self.state_path.is_file() or self.state_path.with_name("state.prev.json").is_file()

    def load_state(self) -> dict[str, Any] | None:
        """The newest readable checkpoint state; None when no round completed yet."""
        problems = []
        for path in (self.state_path, self.state_path.with_name("state.prev.json")):
            if not path.is_file():
                continue
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(state, dict) or not isinstance(state.get("next_round"), int):
                    raise ValueError("no next_round")
            except (ValueError, UnicodeDecodeError) as e:
                problems.append(f"{path} is damaged ({str(e).splitlines()[0]})")
                continue
            if problems:
                log.warning("%s; resuming from the checkpoint before it (%s)", problems[0], path.name)
            return state
        if problems:
            raise RunDirError(f"{'; '.join(problems)}: no checkpoint to resume from")
        return None


@dataclass
class RunState:
    """What a resumed run needs besides the files it appends to: the next round, the per-round rows,
    the base-model evaluation and the RNG. Written atomically after every completed round."""

    next_round: int = 0
    rounds: list[dict] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the completed rounds, over every session
    torch_rng: str = ""

    def saved_rounds(self) -> dict[str, int]:
        """The round of each client's last saved adapter: the last round it completed (absent: none yet)."""
        return {name: r["round"] for r in self.rounds for name in r.get("completed", [])}

    def save(self, run_dir: RunDir) -> None:
        import torch

        self.torch_rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
        run_dir.save_state(asdict(self))

    @classmethod
    def load(cls, run_dir: RunDir) -> RunState | None:
        """The state after the last completed round (restoring the RNG), or None before the first."""
        import numpy as np
        import torch

        saved = run_dir.load_state()
        if saved is None:
            return None
        try:
            state = cls(**saved)
            if state.torch_rng:
                rng = np.frombuffer(base64.b64decode(state.torch_rng), dtype=np.uint8).copy()
                torch.set_rng_state(torch.from_numpy(rng))
        except (TypeError, ValueError, RuntimeError) as e:
            raise RunDirError(f"{run_dir.state_path}: not a semcon checkpoint state ({e})") from None
        return state
