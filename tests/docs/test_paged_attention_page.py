"""The paged_attention kernel page's worked examples print what the code prints."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import numpy as np

from tinyserve_sim.data import make_plan, split_candidates

PAGE = Path(__file__).resolve().parents[2] / "docs" / "kernels" / "paged_attention.md"


def test_every_interactive_example_on_the_page_runs_as_printed():
    blocks = [b for b in re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL) if ">>>" in b]
    assert blocks, "the page has no interactive example"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for i, block in enumerate(blocks):
        test = doctest.DocTestParser().get_doctest(
            block, {"np": np, "make_plan": make_plan, "split_candidates": split_candidates}, f"block {i}", str(PAGE), 0
        )
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
