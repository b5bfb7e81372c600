#!/usr/bin/env python3
"""Check the layering contract of ``pyproject.toml`` ([tool.importlinter]) on the package as it ships.

The contract is import-linter's: layers and forbidden imports between the
planes (``docs/architecture.md`` draws them). One detail needs this script:
``gpu/`` sits at the top of the repository but ships as ``tinyserve_sim.gpu``,
and import-linter reads packages from the file system. So the script first
*stages* the shipped layout (``tinyserve_sim/`` with ``gpu/`` copied in as
``tinyserve_sim/gpu/``, Python files only) in a temporary folder, then runs
``lint-imports`` on it.

    python scripts/check_layers.py          # exit status 0: every contract kept

``tests/test_architecture.py`` runs it, and also plants a forbidden import in
a staged copy to show that the check fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage(dest: Path) -> Path:
    """Copy the shipped layout of the package's Python files under ``dest``; return ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.cu", "*.cuh")
    shutil.copytree(ROOT / "tinyserve_sim", dest / "tinyserve_sim", ignore=ignore)
    shutil.copytree(ROOT / "gpu", dest / "tinyserve_sim" / "gpu", ignore=ignore)
    return dest


def lint(staged: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with the project's contracts on a staged copy."""
    env = {**os.environ, "PYTHONPATH": str(staged)}
    # -c so that the staged folder, not an editable install of the project, provides the package.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[2], no_cache=True))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(staged), str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, env=env, cwd=staged,
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tinyserve-layers-") as tmp:
        result = lint(stage(Path(tmp)))
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
