"""Fuzz every decoder a peer's bytes reach, 100,000+ inputs by default, and print what happened as JSON: inputs
tried per target and outcome, exceptions that escaped the guard (target 0, with the first few), peak memory.

    .venv/bin/python scripts/fuzz_decoders.py [--examples 100000]

The targets and input strategies are the suite's (tests/test_fuzz.py), which runs a few hundred of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fuzz import TARGETS, fuzz  # noqa: E402 - the suite's targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000, help="inputs in all, shared by the targets")
    args = parser.parse_args()
    logging.getLogger("semcon").setLevel(logging.ERROR)  # each rejected upload would log a line
    per_target = -(-args.examples // len(TARGETS))
    report, escaped, started = {}, [], time.perf_counter()
    for name in TARGETS:
        outcomes = Counter()

        def count(outcome, outcomes=outcomes, name=name):
            if isinstance(outcome, BaseException):
                outcomes["escaped"] += 1
                if len(escaped) < 5:
                    escaped.append(f"{name}: {type(outcome).__name__}: {str(outcome)[:200]}")
            else:
                outcomes[outcome] += 1

        begun = time.perf_counter()
        fuzz(name, per_target, count)()
        report[name] = {"inputs": sum(outcomes.values()), "outcomes": dict(outcomes),
                        "seconds": round(time.perf_counter() - begun, 1)}
        print(f"{name}: {report[name]}", file=sys.stderr, flush=True)
    print(json.dumps({
        "inputs_tried": sum(r["inputs"] for r in report.values()),
        "escaped": sum(r["outcomes"].get("escaped", 0) for r in report.values()),
        "first_escapes": escaped,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "targets": report,
    }, indent=1))


if __name__ == "__main__":
    main()
