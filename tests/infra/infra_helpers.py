"""Helpers shared by the infra tests: free ports and running the CLI like a user."""

from __future__ import annotations

import socket
import subprocess
import sys

PATCHSIGHT = [sys.executable, "-m", "patchsight.cli"]


def free_port_pair() -> int:
    """A port p with p and p+1 free (Kafka's controller listens on p+1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port pair")


def cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(PATCHSIGHT + list(args), env=env, capture_output=True, text=True, timeout=timeout)
