"""Running the real vendor clients (Deepgram, AssemblyAI, ...) that the e2e tests drive.

The Python clients live in ``clients/`` and run from their own environments
(``.venv-clients/<name>``, which ``make clients`` installs) as child processes; each prints
one JSON object. The JS clients run under Node from ``js/``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
CLIENTS = Path(__file__).resolve().parent / "clients"
VENVS = ROOT / ".venv-clients"
JS = Path(__file__).resolve().parent / "js"


def python_of(client: str, vendor: str) -> Path:
    """The Python of the ``client`` environment; the test fails, naming ``vendor``'s
    clients, where it is not installed."""
    python = VENVS / client / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: `make clients` installs the {vendor} clients")
    return python


def run_client(command: list[str], timeout: float) -> dict[str, Any]:
    """Run a client to its end; what it printed, with its ``stderr``. A client that fails
    (or prints no JSON) fails the test, showing the end of its stderr."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout)
    result["stderr"] = done.stderr
    return result
