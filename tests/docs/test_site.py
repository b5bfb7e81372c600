"""The documentation site builds with ``mkdocs build --strict``: no broken link, no missing page,
no failing tutorial (mkdocs-jupyter executes them with ``allow_errors: false``)."""

import os
import re
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
    assert "<svg" in tutorial or "data:image/" in tutorial, "tutorial 1 shows no figure"
    assert "Traceback" not in tutorial
    # Every tutorial picture has a description.
    for page in sorted(site.glob("tutorials/[0-9][0-9]_*/index.html")):
        assert "No description has been provided" not in page.read_text(), page.parent.name
    # Tutorials 8 and 9 are on the site; a player for each built-in scenario, self-contained.
    for page in ("tutorials/08_continuous_batching/index.html",
                 "tutorials/09_preemption_by_recomputation/index.html", "players/index.html"):
        assert (site / page).is_file(), page
    players = sorted(p.stem for p in (site / "players").glob("*.html") if p.name != "index.html")
    assert "tour" in players and "eviction" in players
    assert not re.search(r"https?://", (site / "players" / "tour.html").read_text())
    # Formulas are typeset by KaTeX served by the site itself; no MathJax from a CDN.
    assert (site / "assets/katex/katex.min.js").is_file()
    kernel = (site / "kernels/paged_attention/index.html").read_text()
    assert 'class="arithmatex"' in kernel and "assets/katex/katex.min.js" in kernel
    assert "cdnjs.cloudflare.com/ajax/libs/mathjax" not in tutorial
    # The getting-started samples were produced by this build.
    started = (site / "getting-started/index.html").read_text()
    assert "generated:" not in started and "add 'A': 11 prompt tokens" in started
    # Under tutorial 4's skipped GPU cell: the GPU record (or the note that there is none yet).
    gpu_page = (site / "tutorials/04_paged_attention_numpy_to_cuda/index.html").read_text()
    assert "Recorded on a GPU" in gpu_page or "No GPU record yet" in gpu_page
