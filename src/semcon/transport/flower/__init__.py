"""semcon on Flower's deployment engine: thin ServerApp/ClientApp adapters around the same round loop,
clients, codec and ledger as the in-process simulation, plus a launcher for SuperLink and SuperNodes."""

import shutil
import sys
from pathlib import Path


def flwr_bin(name: str) -> str:
    """A Flower executable (``flwr``, ``flower-superlink``, ...) of this Python environment, else of the PATH."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)
