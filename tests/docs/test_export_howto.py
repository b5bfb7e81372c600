"""The how-to "From the simulator to a real server's tensors" shows outputs; they are the
outputs of its code. Each ```python block runs (in order, one namespace) and what it prints
must equal the ```text title="output" block that follows it. Blocks titled "GPU machine"
are not run here (tests/gpu/test_third_party_kernels.py runs that code)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "export-to-a-server.md"
FENCE = re.compile(r'```(\w+)(?: title="([^"]*)")?\n(.*?)```', re.S)


def test_every_shown_output_is_what_the_code_prints():
    blocks = FENCE.findall(PAGE.read_text())
    namespace: dict = {}
    checked = 0
    for i, (lang, title, body) in enumerate(blocks):
        if lang != "python" or title == "GPU machine":
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(body, f"{PAGE.name} block {i}", "exec"), namespace)
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        if following and following[0] == "text" and following[1] == "output":
            assert printed.getvalue().rstrip("\n") == following[2].rstrip("\n"), f"block {i}"
            checked += 1
    assert checked >= 6
