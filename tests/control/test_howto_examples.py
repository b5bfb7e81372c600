"""The how-to pages on policies and trace operations: their code runs, and prints what they say.

Each ```python block of a page runs in order in one namespace; a block followed by a
```text block must print exactly that text. Registry excerpts (a block that starts
with ``POLICIES:`` or ``OPERATIONS:``) are checked against the code instead.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import textwrap
from pathlib import Path

import pytest

from tinyserve_sim.control import operations, policies
from tinyserve_sim.control.trace import loads

HOW_TO = Path(__file__).resolve().parents[2] / "docs" / "how-to"
BLOCK = re.compile(r"```(python|text)\n(.*?)```", re.S)


def blocks(page: str) -> list[tuple[str, str]]:
    return BLOCK.findall((HOW_TO / page).read_text())


def run_page(page: str, after_block=lambda namespace: None) -> None:
    found = blocks(page)
    namespace: dict = {}
    for i, (kind, code) in enumerate(found):
        if kind != "python" or code.startswith(("POLICIES:", "OPERATIONS:", "@dataclass")):
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{page}, block {i}", "exec"), namespace)
        after_block(namespace)
        if i + 1 < len(found) and found[i + 1][0] == "text":
            assert out.getvalue() == found[i + 1][1], f"{page}, block {i} printed:\n{out.getvalue()}"


def test_add_a_policy_examples_run_as_written(monkeypatch):
    def register(namespace):
        if "LowestIdFirst" in namespace:
            monkeypatch.setitem(policies.POLICIES, "lowest", namespace["LowestIdFirst"])
        if "MruEvictor" in namespace:
            monkeypatch.setitem(policies.EVICTORS, "mru", namespace["MruEvictor"])

    run_page("add-a-policy.md", register)
    # The new names work in a trace header too, and the manager keeps its invariants.
    trace = loads(
        '{"format": "tinyserve-sim-trace", "version": 1, "block_size": 2, "num_blocks": 6, '
        '"policy": "lowest", "prefix_caching": true, "evictor": "mru"}\n'
        '{"op": "add", "seq": "a", "prompt": [1, 2, 3, 4, 5]}\n{"op": "free", "seq": "a"}\n'
        '{"op": "add", "seq": "b", "prompt": [7, 8, 9, 10, 11, 12, 13, 14, 15]}\n'
    )
    replay = trace.replay()
    replay.run()
    assert replay.error is None
    replay.manager.check_invariants()
    # The free queue first, lowest ids first; then the most recently parked block (0, parked after 1).
    assert replay.manager.block_table("b") == (2, 3, 4, 5, 0)


def test_add_a_policy_registry_excerpt_matches_the_code():
    excerpt = next(code for kind, code in blocks("add-a-policy.md") if code.startswith("POLICIES:"))
    source = inspect.getsource(policies)
    for line in excerpt.splitlines():
        if "lowest" not in line:  # the line the page adds
            assert line in source


def test_add_a_trace_operation_shows_the_real_class_and_registry():
    found = [code for kind, code in blocks("add-a-trace-operation.md") if kind == "python"]
    shown_class = next(code for code in found if code.startswith("@dataclass"))
    assert shown_class == textwrap.dedent(inspect.getsource(operations.Decode))
    shown_registry = next(code for code in found if code.startswith("OPERATIONS:"))
    assert shown_registry in inspect.getsource(operations)


def test_add_a_trace_operation_example_runs_as_written():
    run_page("add-a-trace-operation.md")


@pytest.mark.parametrize("page", ["write-a-trace.md"])
def test_write_a_trace_recorder_example_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it saves mine.jsonl
    run_page(page)
    assert [op.name for op in loads((tmp_path / "mine.jsonl").read_text()).ops] == ["add", "fork", "append", "decode"]


def test_every_operation_is_in_the_trace_format_table():
    from tinyserve_sim.control import trace

    table = trace.__doc__.split("Operation fields")[1].split("Any other field")[0]
    for name, op in operations.OPERATIONS.items():
        assert f"``{name}``" in table, name
        required, optional = op.json_fields()
        for field in required + optional:
            assert f"``{field}``" in table, (name, field)
