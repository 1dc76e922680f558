"""MMLU evaluation with the chat prompt: accuracy read off the bits-per-byte forward against a second
forward pass of every question (``choice_accuracy``), on the study's 100 MMLU-medicine rows, SmolLM2-135M,
measured side by side (best of 2). Prints one JSON line with both times, ``speedup`` (target > 1.5) and
whether accuracy and bits per byte agree.

    python benchmarks/bench_eval.py
"""

from __future__ import annotations

import json
import time

import torch

from semcon.config import load_config
from semcon.data.splits import build_splits
from semcon.member.evaluate import choice_accuracy, reference_scores
from semcon.member.models import Backbone


def main(reps: int = 2) -> None:
    rows = build_splits(load_config("configs/study.yaml")).eval["mmlu:medicine"]
    bb = Backbone.load("smollm2-135m", torch.float32, torch.device("cpu"))
    kw = {"batch_size": 8, "device": bb.device, "dtype": bb.dtype}
    two, one = [], []
    for _ in range(reps):
        start = time.perf_counter()
        old = reference_scores(bb.model, bb.fmt, rows, **kw)
        old["accuracy"] = choice_accuracy(bb.model, bb.fmt, rows, "chat", bb.device, bb.dtype, 8)
        two.append(time.perf_counter() - start)
        start = time.perf_counter()
        new = reference_scores(bb.model, bb.fmt, rows, mmlu_prompt="chat", **kw)
        one.append(time.perf_counter() - start)
    print(json.dumps({"bench": "eval", "rows": len(rows), "seconds_two_forwards": round(min(two), 2),
                      "seconds_one_forward": round(min(one), 2), "speedup": round(min(two) / min(one), 2),
                      "same_accuracy": old["accuracy"] == new["accuracy"],
                      "same_bpb": abs(old["bpb"] - new["bpb"]) < 1e-9}))


if __name__ == "__main__":
    main()
