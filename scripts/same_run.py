"""Whether two run folders computed the same run: their pseudo-labels, kept uploads and ledger, byte for byte.

A refactor must change no number a run computes. Run the demo at seed 0 before and after it, on one machine,
and compare (issue 38's check; about 13 minutes a run on a 2-core CPU):

    git worktree add /tmp/before <old commit>
    PYTHONPATH=/tmp/before/src python -m semcon run configs/demo.yaml --out /tmp/demo-before
    python -m semcon run configs/demo.yaml --out /tmp/demo-after
    python scripts/same_run.py /tmp/demo-before /tmp/demo-after

Prints one line per file and exits 1 when any differs.
"""

from __future__ import annotations

import sys
from pathlib import Path


def compared(a: Path, b: Path) -> list[tuple[str, bool]]:
    """(relative path, equal) for ledger.jsonl and every file under pseudo_labels/ and uploads/ of either run."""
    names = {"ledger.jsonl"}
    for run in (a, b):
        names |= {str(f.relative_to(run)) for folder in ("pseudo_labels", "uploads") for f in (run / folder).glob("*")}
    return [(n, (a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes())
            for n in sorted(names)]


def main() -> None:
    a, b = (Path(p) for p in sys.argv[1:3])
    results = compared(a, b)
    for name, same in results:
        print(f"{'same' if same else 'DIFFERS'}  {name}")
    print(f"{sum(s for _, s in results)} of {len(results)} files identical")
    sys.exit(0 if all(s for _, s in results) else 1)


if __name__ == "__main__":
    main()
