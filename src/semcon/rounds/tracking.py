"""``log: [tensorboard, wandb]`` (``--log``): every ``metrics.jsonl`` row mirrored as scalars, for people who
follow runs there. The JSONL file stays the source of truth; these are views of it, written as it grows."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from semcon.config import ConfigError, RunConfig


def scalars(row: dict, last_round: int) -> Iterator[tuple[str, float, int]]:
    """The numbers of one metrics row as ``(tag, value, step)``. A round row's numbers are at step = round, its
    per-step training losses under ``train_loss/CLIENT`` at the optimizer step (round × steps + step); an
    evaluation row's under ``eval_STAGE/CLIENT/DOMAIN/METRIC``, before training at step 0, after at the last round."""
    match row.get("event"):
        case "round":
            t = row["round"]
            for key, value in row.items():
                if key == "train_loss":
                    for client, losses in value.items():
                        yield from ((f"train_loss/{client}", x, t * len(losses) + i) for i, x in enumerate(losses))
                elif key not in ("event", "round"):
                    yield from ((tag, x, t) for tag, x in _numbers(key, value))
        case "eval":
            step = 0 if row["stage"] == "before" else last_round
            yield from ((tag, x, step) for tag, x in _numbers(f"eval_{row['stage']}/{row['client']}", row["metrics"]))


def _numbers(prefix: str, value) -> Iterator[tuple[str, float]]:
    """Every number in ``value`` (nested mappings give tags ``prefix/key/...``); texts, lists and flags are not
    scalars and are left to the JSONL file."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _numbers(f"{prefix}/{key}", inner)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield prefix, float(value)


class TensorBoard:
    """Event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``)."""

    def __init__(self, run_dir: Path, cfg: RunConfig):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "```yaml\n" + cfg.dump() + "```")

    def write(self, row: dict, last_round: int) -> None:
        for tag, value, step in scalars(row, last_round):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A Weights & Biases run with the run directory's id, offline unless ``WANDB_MODE`` says otherwise (then
    ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it). Round numbers and optimizer steps are its two x-axes."""

    def __init__(self, run_dir: Path, cfg: RunConfig, run_id: str):
        try:
            import wandb
        except ImportError:
            raise ConfigError("log: wandb is not installed (pip install wandb), or use --log tensorboard") from None
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "semcon"), name=cfg.name, id=run_id,
                              resume="allow", dir=str(run_dir), config=cfg.model_dump(mode="json"))
        self.run.define_metric("train_step")
        self.run.define_metric("train_loss/*", step_metric="train_step")
        self.run.define_metric("round")
        self.run.define_metric("*", step_metric="round")

    def write(self, row: dict, last_round: int) -> None:
        by_step: dict[tuple[str, int], dict[str, float]] = {}
        for tag, value, step in scalars(row, last_round):
            axis = "train_step" if tag.startswith("train_loss/") else "round"
            by_step.setdefault((axis, step), {axis: step})[tag] = value if math.isfinite(value) else None
        for values in by_step.values():
            self.run.log(values)

    def close(self) -> None:
        import wandb

        self.run.finish()
        wandb.teardown()  # stop W&B's service process, which would otherwise outlive the run


@contextmanager
def tracking(cfg: RunConfig, run_dir: Path, run_id: str, last_round: int):
    """A function that mirrors one metrics row to every tracker of ``cfg.log`` (none: it does nothing)."""
    with ExitStack() as stack:
        trackers = []
        for kind in cfg.log:
            tracker = TensorBoard(run_dir, cfg) if kind == "tensorboard" else WandB(run_dir, cfg, run_id)
            stack.callback(tracker.close)
            trackers.append(tracker)

        def mirror(row: dict) -> None:
            for tracker in trackers:
                tracker.write(row, last_round)

        yield mirror
