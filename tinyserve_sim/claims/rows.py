"""A row of the claims tables, and the rule that turns checks into a verdict.

Shared by :mod:`~tinyserve_sim.claims.verdicts` (the seed's claims) and
:mod:`~tinyserve_sim.claims.paper` (the vLLM paper's figures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ClaimRow:
    """One row: the claim as written, what was simulated, the figure, the verdict and why."""

    claim: str
    simulated: str
    measured: str
    verdict: str
    reason: str


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _verdict(checks: list[tuple[str, bool]]) -> tuple[str, str]:
    """All true: holds; some: holds under the conditions that passed; none: does not hold."""
    passed = [label for label, ok in checks if ok]
    if len(passed) == len(checks):
        return "holds", "true in every scenario simulated"
    if passed:
        return "holds under stated conditions", "true only for: " + ", ".join(passed)
    return "does not hold", "false in every scenario simulated"


def rows_to_json(rows: list[ClaimRow]) -> list[dict]:
    return [asdict(row) for row in rows]


def markdown_rows(rows: list[ClaimRow]) -> str:
    """A Markdown table of rows (the docs page shows it)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| claim | simulated | measured | verdict | why |", "|---|---|---|---|---|"]
    for r in rows:
        cells = (r.claim, r.simulated, r.measured, f"**{r.verdict}**", r.reason)
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
