"""The layering contract (pyproject.toml, [tool.importlinter]) holds, and its check can fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
check_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_layers)


def test_every_layering_contract_is_kept(tmp_path: Path) -> None:
    result = check_layers.lint(check_layers.stage(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        # The control plane reaching for the bytes.
        ("control/pool.py", "import tinyserve_sim.data.cache", "The control plane knows nothing"),
        # The data plane reaching up into the serving simulator.
        ("data/cache.py", "import tinyserve_sim.serving.scheduler", "Layers:"),
        # An interface importing the GPU package directly instead of asking the factory.
        ("render/terminal.py", "import tinyserve_sim.gpu.build", "Nothing imports tinyserve_sim.gpu"),
    ],
)
def test_a_planted_forbidden_import_breaks_the_check(tmp_path: Path, module: str, planted: str, contract: str) -> None:
    staged = check_layers.stage(tmp_path)
    target = staged / "tinyserve_sim" / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    result = check_layers.lint(staged)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.rstrip().endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_every_package_ships():
    """pyproject.toml lists the packages by hand (gpu/ ships as tinyserve_sim.gpu): a package
    missing from the list would be missing from the wheel while an editable install hides it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(("tinyserve_sim", *init.parent.relative_to(ROOT / "tinyserve_sim").parts))
        for init in (ROOT / "tinyserve_sim").rglob("__init__.py")
    }
    on_disk |= {".".join(("tinyserve_sim.gpu", *init.parent.relative_to(ROOT / "gpu").parts)).rstrip(".")
                for init in (ROOT / "gpu").rglob("__init__.py")}
    on_disk.add("tinyserve_sim.gpu.kernels")  # CUDA sources only, shipped as package data
    assert on_disk == listed, (on_disk - listed, listed - on_disk)
