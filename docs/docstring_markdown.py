"""Render this project's docstrings as Markdown: a Griffe extension, also used by docs/hooks.py.

The docstrings follow the Google style (``Args:``, ``Raises:``...), which
mkdocstrings understands, but they also use a few reStructuredText habits that
read well in ``help()`` and badly in Markdown. This converts them when the API
reference is built (``extensions`` in ``mkdocs.yml``), without touching the code:

* ``text::`` followed by an indented block -> ``text:`` and a fenced code block;
* a doctest (``>>>`` lines and their output) -> a fenced ``pycon`` block;
* a simple table (``====  ====`` rules) -> a Markdown table;
* roles: ``:class:`~a.b.C``` -> ```C```, ``:meth:`x``` -> ```x```.
"""

from __future__ import annotations

import re
from typing import Any

try:
    import griffe
except ImportError:  # imported by the hook alone, griffe is not needed
    griffe = None

_RULE = re.compile(r"=+( +=+)+")
_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):`~?([^`]+)`")


def _role(match: re.Match) -> str:
    target = match.group(1)
    tilde = match.group(0).split("`")[1].startswith("~")
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def rst_to_markdown(text: str) -> str:
    """Convert the reStructuredText habits listed in the module docstring."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if in_fence:
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.endswith("::") and not stripped.startswith(">>>"):
            head = line.rstrip()[:-1]
            out.append(head if head.strip() != ":" else "")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            deeper = len(indent) + 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= deeper):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                cut = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                lang = "json" if block[0].strip().startswith("{") else ("python" if "=" in block[0] or "(" in block[0] else "text")
                out += ["", f"{indent}```{lang}", *(indent + b[cut:] for b in block), f"{indent}```", ""]
            continue
        if stripped.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
                i += 1
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            continue
        if _RULE.fullmatch(stripped):
            columns = [m.start() for m in re.finditer(r"=+", line)]
            rows = []
            i += 1
            while i < len(lines) and not _RULE.fullmatch(lines[i].strip()):
                row = lines[i]
                rows.append([_ROLE.sub(_role, row[a:b].strip()) for a, b in zip(columns, columns[1:] + [len(row)])])
                i += 1
            i += 1  # the closing rule
            width = len(columns)
            header = ["field", "meaning"] if width == 2 else [""] * width
            out += [indent + "| " + " | ".join(header) + " |", indent + "|" + "---|" * width]
            out += [indent + "| " + " | ".join(cells) + " |" for cells in rows]
            continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


if griffe is not None:

    class RstToMarkdown(griffe.Extension):
        """Convert every docstring as it is loaded."""

        def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)
