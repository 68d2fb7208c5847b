"""The import contract in pyproject.toml (``lint-imports``, run by ``make lint``): it holds
for the package, and it breaks when a lower layer imports a higher one (from a function
body too), when a transport imports the settings module, or when an import cycle appears.

The failing cases run the contract on a copy of the package with one import added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is a dev dependency")

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root/src`` with ``root/pyproject.toml``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        capture_output=True,
        text=True,
        check=False,
    )


def copy_with(tmp_path: Path, module: str, added: str) -> Path:
    """A copy of the package's Python files and the contract, ``added`` appended to
    ``module`` (a path under ``src/streamer``)."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(
        ROOT / "src" / "streamer",
        tmp_path / "src" / "streamer",
        ignore=lambda _, names: [n for n in names if n == "__pycache__" or n.endswith(".onnx")],
    )
    target = tmp_path / "src" / "streamer" / module
    target.write_text(target.read_text() + "\n\n" + added + "\n")
    return tmp_path


def test_the_package_keeps_its_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_lower_layer_importing_a_higher_one_in_a_function_breaks_it(tmp_path: Path) -> None:
    upward = "def _upward() -> object:\n    from streamer import pipeline\n\n    return pipeline"
    result = lint_imports(copy_with(tmp_path, "events.py", upward))
    assert result.returncode != 0
    assert "Every layer imports only the layers below it BROKEN" in result.stdout
    assert "streamer.events is not allowed to import streamer.pipeline" in result.stdout


def test_a_transport_reading_the_settings_module_breaks_it(tmp_path: Path) -> None:
    settings = "from streamer.config import ServerSettings as _ServerSettings  # noqa: E402"
    result = lint_imports(copy_with(tmp_path, "transport/limits.py", settings))
    assert result.returncode != 0
    assert "Transports take values, not the settings module BROKEN" in result.stdout
    assert "streamer.transport.limits -> streamer.config" in result.stdout


def test_an_import_cycle_inside_a_layer_breaks_it(tmp_path: Path) -> None:
    # cli/serve.py imports cli/workers.py; the other way round closes a cycle.
    back = "def _back() -> object:\n    from streamer.cli import serve\n\n    return serve"
    result = lint_imports(copy_with(tmp_path, "cli/workers.py", back))
    assert result.returncode != 0
    assert "No import cycles, at any depth BROKEN" in result.stdout
    assert "No cycles are allowed in streamer.cli" in result.stdout
