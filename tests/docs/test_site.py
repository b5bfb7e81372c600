"""The documentation site builds with ``mkdocs build --strict``: no broken link, no missing page,
no failing tutorial (mkdocs-jupyter executes them with ``allow_errors: false``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-8000:]
    # The pages that come from the code are there.
    for page in ("index.html", "tutorials/01_first_block_table/index.html", "reference/cli/index.html",
                 "reference/trace-format/index.html", "errata/index.html"):
        assert (site / page).is_file(), page
    pictures = list((site / "assets" / "generated").glob("*.svg"))
    assert len(pictures) > 20, "the build hook drew too few pictures"
    tutorial = (site / "tutorials/01_first_block_table/index.html").read_text()
    assert "<svg" in tutorial or "data:image/png" in tutorial, "tutorial 1 shows no figure"
    assert "Traceback" not in tutorial
