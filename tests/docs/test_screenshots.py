"""The built site opens in a real browser: scripts/screenshot_docs.py shoots three pages in headless Chromium."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_screenshots(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshot_docs.py"), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert shots == ["home.png", "players.png", "tutorials_01_first_block_table.png"]
