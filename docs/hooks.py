"""MkDocs build hook: everything on the site that comes from the code is made here, at build time.

Wired in ``mkdocs.yml`` (``hooks: [docs/hooks.py]``). On every build it adds to
the site, without writing anything into the source tree:

* the tutorials: each ``tutorials/NN_*.py`` (jupytext percent format) becomes
  the page ``tutorials/NN_*/``; mkdocs-jupyter then executes and renders it;
* every picture under ``assets/generated/``, drawn by the simulator itself
  (:func:`tinyserve_sim.render.draw_state` and a few figures of its own below),
  so a picture can never drift from the code; a picture of a scenario written
  with an empty alternative text (``![](...)``) gets the simulator's own
  description of that state (:func:`tinyserve_sim.render.describe_state`);
* ``players.md`` and ``players/NAME.html``: an interactive trace player for
  every built-in scenario (:mod:`tinyserve_sim.render.html`);
* the sample outputs of the getting-started page, by running them;
* under the GPU cells of tutorials 4, 5 and 6, when this machine has no GPU, what
  those cells printed on a GPU machine (``docs/records/gpu-cells.json``,
  written there by ``scripts/record_gpu_cells.py``);
* ``reference/cli.md``, from the Typer app's own ``--help`` output;
* ``reference/trace-format.md``, from the specification in ``trace.py``'s
  docstring, checked by parsing its example, plus every built-in scenario;
* and, when the workloads package provides them, the claim plots.

The docstrings' reStructuredText habits are converted to Markdown by the Griffe
extension in ``docs/docstring_markdown.py``, which this hook reuses for the
trace-format page.
"""

from __future__ import annotations

import io
import logging
import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from docstring_markdown import rst_to_markdown  # noqa: E402  (docs/ is on sys.path while MkDocs loads a hook)
from matplotlib.patches import Rectangle  # noqa: E402
from mkdocs.plugins import event_priority  # noqa: E402
from mkdocs.structure.files import File, Files  # noqa: E402

log = logging.getLogger("mkdocs.hooks.tinyserve")

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
GENERATED = "assets/generated"

# Deterministic SVGs: no date, stable element ids.
matplotlib.rcParams["svg.hashsalt"] = "tinyserve-sim"
SVG_META = {"Date": None, "Creator": "tinyserve-sim docs build"}


# ----------------------------------------------------------------------------- events
@event_priority(100)  # before mkdocs-jupyter's on_files, which must see the tutorials
def on_files(files: Files, config) -> Files:
    for path in sorted(TUTORIALS.glob("[0-9][0-9]_*.py")):
        # A plain File whose source folder is the repository root rather than docs/.
        files.append(File(f"tutorials/{path.name}", str(ROOT), config.site_dir, config.use_directory_urls))
    for name, content in _pictures().items():
        files.append(File.generated(config, f"{GENERATED}/{name}", content=content))
    for name, content in _players().items():
        files.append(File.generated(config, f"players/{name}.html", content=content))
    files.append(File.generated(config, "players.md", content=_players_page()))
    files.append(File.generated(config, "reference/cli.md", content=_cli_page()))
    files.append(File.generated(config, "reference/trace-format.md", content=_trace_format_page()))
    return files


def on_serve(server, config, builder):
    """``mkdocs serve`` also rebuilds when a tutorial or the simulator changes."""
    for folder in (TUTORIALS, ROOT / "tinyserve_sim"):
        server.watch(str(folder))
    return server


# ---------------------------------------------------------------------------- pictures
def _svg(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata=SVG_META)
    plt.close(fig)
    return buffer.getvalue()


# The words for each generated picture of a scenario state, used as its alternative text.
_ALT: dict[str, str] = {}


def _pictures() -> dict[str, bytes]:
    from tinyserve_sim import BlockManager
    from tinyserve_sim.render import describe_state, draw_state
    from tinyserve_sim.scenarios import SCENARIOS

    out: dict[str, bytes] = {}

    # Every operation of every built-in scenario: scenario-NAME-initial.svg before any, then
    # scenario-NAME-op-NNN.svg after operation NNN (the number `tinyserve-sim demo` prints).
    # Drawing the replay's manager keeps each sequence's colour across the pictures.
    for name, scenario in SCENARIOS.items():
        replay = scenario.trace().replay()
        title = f"{name}: initial state"
        out[f"scenario-{name}-initial.svg"] = _svg(draw_state(replay.manager, title))
        _ALT[f"scenario-{name}-initial.svg"] = f"{title}. {describe_state(replay.manager)}"
        for record in replay:
            title = f"{name}, after operation {record.index}: {record.op}"
            picture = f"scenario-{name}-op-{record.index:03d}.svg"
            out[picture] = _svg(draw_state(replay.manager, title))
            what = record.explain().split("  [")[0]
            _ALT[picture] = f"{name}, after operation {record.index}, {what}. {describe_state(replay.manager)}"
        if replay.error is not None:  # a built-in scenario must run to the end
            raise RuntimeError(f"scenario {name!r} stopped: {replay.stop_message()}")

    # Paging: three requests of different lengths in one pool.
    m = BlockManager(num_blocks=16, block_size=4)
    m.add("a", 7)
    m.add("b", 13)
    m.add("c", 2)
    m.append("a", 2)
    out["paging-three-sequences.svg"] = _svg(
        draw_state(m, "a: 7 + 2 tokens, b: 13 tokens, c: 2 tokens (block size 4)")
    )

    out["free-queue-fifo-vs-lifo.svg"] = _svg(_free_queue_figure())
    out["auto-small-grids.svg"] = _svg(_small_grids_figure())
    out["architecture-imports.svg"] = _svg(_architecture_figure())

    out.update(_claim_plots())
    return out


#: Four small grids of benchmarks/results/h200_s9_auto_short_rows.log: (B, L, Hq, Hkv).
SMALL_GRIDS = ((1, 2048, 64, 8), (8, 3072, 32, 8), (16, 3072, 32, 8), (8, 1536, 32, 32))


def _small_grids_figure():
    """Measured times (an H200 log) of every launch of four small decode grids, with the
    launch the current ``choose_split`` names drawn dark: no one partition wins them all."""
    from tinyserve_sim.data.geometry import choose_split, make_plan

    log = (ROOT / "benchmarks" / "results" / "h200_s9_auto_short_rows.log").read_text()
    fig, axes = plt.subplots(1, len(SMALL_GRIDS), figsize=(11, 2.8), sharey=False)
    for ax, (B, L, Hq, Hkv) in zip(axes, SMALL_GRIDS):
        line = next(ln for ln in log.splitlines() if ln.startswith(f"B={B} L={L} Hq={Hq} Hkv={Hkv} "))
        times = dict(re.findall(r"(one_pass|split/\d+) ([\d.]+)", line.split("|")[1]))
        variant, part = choose_split(make_plan(128, np.float16, Hq // Hkv), Hq, Hkv, np.full(B, L))
        chosen = "one_pass" if variant == "one_pass" else f"split/{part}"
        names = list(times)
        labels = ["one pass" if n == "one_pass" else n.split("/")[1] for n in names]
        ax.bar(labels, [float(times[n]) for n in names],
               color=["#1f4e79" if n == chosen else "#9dc3e6" for n in names])
        ax.set_title(f"batch {B} x {L:,} tokens, {Hq}/{Hkv} heads", fontsize=9)
        ax.set_ylabel("us" if ax is axes[0] else "")
        ax.tick_params(labelsize=8)
    fig.suptitle("small grids on an H200: time of each launch; dark = what variant=\"auto\" picks", fontsize=10)
    fig.tight_layout()
    return fig


def _free_queue_figure():
    """The hand-worked examples of pool.py's docstring, replayed on real BlockPools."""
    from tinyserve_sim.control.pool import BlockPool

    fig, axes = plt.subplots(2, 1, figsize=(9.5, 4.6))
    for ax, policy in zip(axes, ("fifo", "lifo")):
        pool = BlockPool(4, policy)
        rows = [("start", pool.free_queue(), [])]
        first = pool.allocate(2)
        rows.append((f"allocate(2) -> {first}", pool.free_queue(), first))
        release = list(reversed(first))  # the manager releases a sequence tail first
        pool.release(release)
        rows.append((f"release({release})", pool.free_queue(), []))
        second = pool.allocate(3)
        rows.append((f"allocate(3) -> {second}", pool.free_queue(), second))
        for r, (label, queue, taken) in enumerate(rows):
            y = len(rows) - 1 - r
            ax.text(-0.2, y + 0.45, label, ha="right", va="center", fontsize=9, family="monospace")
            for i, block in enumerate(queue):
                ax.add_patch(Rectangle((i, y + 0.05), 0.9, 0.8, facecolor="#eeeeee", edgecolor="black", lw=0.5))
                ax.text(i + 0.45, y + 0.45, str(block), ha="center", va="center", fontsize=9)
            for i, block in enumerate(taken):
                x = 5 + i
                ax.add_patch(Rectangle((x, y + 0.05), 0.9, 0.8, facecolor="#1f77b4", edgecolor="black", lw=0.5))
                ax.text(x + 0.45, y + 0.45, str(block), ha="center", va="center", fontsize=9, color="white")
        ax.text(0, len(rows) + 0.1, "free queue, next block first", fontsize=8, color="#555555")
        ax.text(5, len(rows) + 0.1, "handed out", fontsize=8, color="#555555")
        ax.set_xlim(-5.2, 8.2)
        ax.set_ylim(-0.1, len(rows) + 0.6)
        ax.set_title(f'policy "{policy}"', fontsize=10, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return fig


def package_imports() -> tuple[list[list[str]], set[tuple[str, str]]]:
    """The layers of the contract in ``pyproject.toml`` and the package-level imports of the code.

    Returns ``(layers, edges)``: each layer a list of package names (top layer
    first, as the contract lists them), and every ``(importer, imported)`` pair
    of packages that grimp finds in the package as it ships (``gpu/`` staged as
    ``tinyserve_sim.gpu`` by ``scripts/check_layers.py``).
    """
    import importlib.util
    import sys
    import tempfile
    import tomllib

    import grimp

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "layers")
    layers = [[name.strip(" ()").removeprefix("tinyserve_sim.") for name in layer.split("|")]
              for layer in contract["layers"]]
    spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
    check_layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_layers)

    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    with tempfile.TemporaryDirectory(prefix="tinyserve-arch-") as tmp:
        check_layers.stage(Path(tmp))
        sys.path.insert(0, tmp)
        try:
            graph = grimp.build_graph("tinyserve_sim", cache_dir=None)  # reads the staged files
        finally:
            sys.path.remove(tmp)
    edges = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = package(module), package(imported)
            if a and b and a != b and a != "__main__":
                edges.add((a, b))
    return layers, edges


def _architecture_figure():
    """Boxes for the contract's layers, arrows for the imports the code really has."""
    layers, edges = package_imports()
    shown = [[p for p in layer if p != "errors"] for layer in layers if layer != ["errors"]]
    fig, ax = plt.subplots(figsize=(9.5, 0.95 * len(shown) + 0.6))
    where: dict[str, tuple[float, float]] = {}
    colors = {"control": "#c8e6c9", "data": "#bbdefb", "gpu": "#d1c4e9"}
    for row, layer in enumerate(shown):
        y = len(shown) - 1 - row
        for i, name in enumerate(layer):
            x = (i + 0.5) * 9.0 / len(layer)
            where[name] = (x, y)
            ax.add_patch(Rectangle((x - 1.1, y - 0.28), 2.2, 0.56, facecolor=colors.get(name, "#eeeeee"),
                                   edgecolor="black", lw=0.6))
            ax.text(x, y, f"tinyserve_sim.{name}", ha="center", va="center", fontsize=8, family="monospace")
    for a, b in sorted(edges):
        if a in where and b in where:
            (x0, y0), (x1, y1) = where[a], where[b]
            ax.annotate("", xy=(x1, y1 + 0.3), xytext=(x0, y0 - 0.3),
                        arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.8,
                                    "connectionstyle": "arc3,rad=0.08"})
    ax.text(0, -0.75, "An arrow: the upper package imports the lower one (read from the code at build time). "
            "Every package may import tinyserve_sim.errors.", fontsize=7.5, color="#555555")
    ax.set_xlim(-1.3, 10.3)
    ax.set_ylim(-1.0, len(shown) - 0.4)
    ax.axis("off")
    fig.tight_layout()
    return fig


# The experiments behind the claim plots, kept so that claims.md's tables come from the same run.
_EXPERIMENTS = None


_EMPTY_ALT = re.compile(r"!\[\]\(([^)\s]*?)([^/)\s]+\.(?:svg|png))\)")


def _fill_alt_texts(markdown: str, page) -> str:
    """``![](.../scenario-NAME-op-NNN.svg)``: the alternative text is the simulator's description."""
    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in _ALT:
            raise ValueError(f"{page.file.src_uri}: the picture {name} has no alternative text: write one")
        return f"![{_ALT[name]}]({match.group(1)}{name})"

    return _EMPTY_ALT.sub(fill, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill generated alternative texts, the getting-started outputs, the claims tables, and the
    serving-time page's table of time-model presets (from ``timing.py``)."""
    markdown = _fill_alt_texts(markdown, page)
    if page.file.src_uri == "getting-started.md":
        return _getting_started(markdown)
    if page.file.src_uri == "concepts/serving-time.md":
        from tinyserve_sim.serving.timing import PRESETS_TABLE_MARKER, presets_markdown

        if PRESETS_TABLE_MARKER not in markdown:
            raise ValueError("serving-time.md lost its table marker " + PRESETS_TABLE_MARKER)
        return markdown.replace(PRESETS_TABLE_MARKER, presets_markdown())
    if page.file.src_uri == "claims.md" and _EXPERIMENTS is not None:
        from tinyserve_sim.claims.verdicts import CLAIMS_TABLE_MARKER, claims_markdown

        if CLAIMS_TABLE_MARKER not in markdown:
            raise ValueError("claims.md lost its table marker " + CLAIMS_TABLE_MARKER)
        return markdown.replace(CLAIMS_TABLE_MARKER, claims_markdown(_EXPERIMENTS))
    return markdown


def _claim_plots() -> dict[str, bytes]:
    """The claim plots (``tinyserve_sim.claims.plots.write_claim_plots``), once ``docs/claims.md`` exists.

    They are written under ``assets/generated/`` with the names ``write_claim_plots`` gives
    them. ``TINYSERVE_DOCS_CLAIMS_SIZE`` picks the experiment size (default ``quick``).
    """
    if not (ROOT / "docs" / "claims.md").exists():
        return {}
    try:
        from tinyserve_sim.claims.experiments import run_experiments
        from tinyserve_sim.claims.plots import write_claim_plots
    except ImportError:
        return {}
    import os
    import tempfile

    global _EXPERIMENTS
    experiments = _EXPERIMENTS = run_experiments(os.environ.get("TINYSERVE_DOCS_CLAIMS_SIZE", "quick"))
    with tempfile.TemporaryDirectory(prefix="tinyserve-claims-") as tmp:
        return {path.name: path.read_bytes() for path in write_claim_plots(experiments, tmp)}


# --------------------------------------------------------------------------- CLI page
def _cli_page() -> str:
    import typer
    from typer.testing import CliRunner

    from tinyserve_sim.cli import app

    env = {"COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}  # the help fits 80 columns

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args), env=env, prog_name="tinyserve-sim")
        if result.exit_code != 0:
            raise RuntimeError(f"tinyserve-sim {' '.join(args)} failed:\n{result.output}")
        return "\n".join(line.rstrip() for line in result.output.splitlines()).strip("\n")

    group = typer.main.get_command(app)
    parts = [
        "# Command line",
        "",
        "!!! note \"Generated\"",
        "    This page is generated from the Typer application in `tinyserve_sim/cli/app.py` when the",
        "    site is built: the help texts below are exactly what `--help` prints.",
        "",
        "The package installs one command, `tinyserve-sim` (also `python -m tinyserve_sim`;",
        "`tinyserve-sim --version` prints its version). Every mistake in its input (a wrong option,",
        "a malformed trace, an unknown scenario, an output path that cannot be written) prints one",
        "line, `error: ...`, on standard error and exits with status 2, never a traceback",
        "(`tests/cli/test_errors.py` checks each command). A trace that stops early (for example",
        "out of blocks) exits with status 1.",
        "",
        "```text",
        "$ tinyserve-sim --help",
        run("--help"),
        "```",
        "",
    ]
    for name, command in group.commands.items():
        doc = textwrap.dedent(command.callback.__doc__ or "").strip() if command.callback else ""
        parts += [f"## `{name}`", "", doc, "", "```text", f"$ tinyserve-sim {name} --help", run(name, "--help"), "```", ""]
        if name == "scenarios":
            parts += ["Listing the built-in scenarios prints:", "", "```text", "$ tinyserve-sim scenarios",
                      run("scenarios"), "```", ""]
    parts += ["See also: [the trace file format](trace-format.md) and "
              "[how to write a trace by hand](../how-to/write-a-trace.md).", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------ trace-format page
def _trace_format_page() -> str:
    from tinyserve_sim.control import trace
    from tinyserve_sim.scenarios import SCENARIOS

    doc = trace.__doc__ or ""
    # The specification's own example must parse: a wrong example fails the build.
    example = re.search(r"::\n\n((?:    .*\n)+)", doc)
    if example is None:
        raise RuntimeError("trace.py's docstring lost its example trace")
    parsed = trace.loads(textwrap.dedent(example.group(1)))
    replay = parsed.replay()
    explained = [step.explain() for step in replay]
    if replay.error is not None:  # shown on the page: the example should replay to its end
        log.info("trace.py's example trace stops early: %s", replay.stop_message())
        explained.append(replay.stop_message())

    parts = [
        "# Trace file format",
        "",
        "!!! note \"Generated\"",
        "    The specification below is the docstring of `tinyserve_sim/control/trace.py`, rendered when the site",
        "    is built; its example is parsed and replayed by the build, and the examples at the end are the",
        "    built-in scenarios written out by `Trace.dumps()`. Version: "
        f"`{trace.FORMAT}` version `{trace.VERSION}`.",
        "",
        rst_to_markdown(textwrap.dedent(doc)),
        "",
        "## What replaying the example prints",
        "",
        "```text",
        *explained,
        "```",
        "",
        "## The built-in scenarios as trace files",
        "",
        "Each is what `tinyserve-sim scenarios NAME` prints (`--write FILE` saves it).",
        "",
    ]
    for name, scenario in SCENARIOS.items():
        parts += [f'??? example "{name}: {scenario.title}"', "", "    ```json"]
        parts += ["    " + line for line in scenario.trace().dumps().splitlines()]
        parts += ["    ```", ""]
    parts += ["See also: [how to write a trace by hand](../how-to/write-a-trace.md), "
              "the [`trace` module's API](api/trace.md) and [the command line](cli.md).", ""]
    return "\n".join(parts)


# ------------------------------------------------------------------------- players
def _players() -> dict[str, str]:
    """One self-contained player page per built-in scenario (tinyserve_sim.render.html)."""
    from tinyserve_sim.render import player_html
    from tinyserve_sim.scenarios import SCENARIOS

    return {name: player_html(scenario.trace()) for name, scenario in SCENARIOS.items()}


def _players_page() -> str:
    from tinyserve_sim.scenarios import SCENARIOS

    parts = [
        "# Scenario player",
        "",
        "!!! note \"Generated\"",
        "    Each player below is what `tinyserve-sim trace FILE --html OUT.html` writes for a built-in",
        "    scenario: one self-contained HTML page, with every state computed by the simulator when",
        "    the site was built. Click a player, then step with the buttons or the arrow keys",
        "    (Home and End jump to the ends).",
        "",
        "The pictures use the colours of every other picture on this site: one colour per sequence,",
        "for its whole life; pink for a block shared by several sequences (`xN` is its reference",
        "count); yellow for a free block that keeps its content in the prefix cache; grey for a",
        "free block. The outlined blocks are those the operation allocated, freed, copied or",
        "evicted.",
        "",
    ]
    for name, scenario in SCENARIOS.items():
        parts += [
            f"## {scenario.title}",
            "",
            f"`tinyserve-sim scenarios {name} --write {name}.jsonl` writes this trace;",
            f"[open the player on its own](players/{name}.html).",
            "",
            f'<iframe class="trace-player" src="{name}.html" title="trace player: {name}" loading="lazy"></iframe>',
            "",
        ]
    parts += ["See also: [the command line](reference/cli.md) and "
              "[the trace file format](reference/trace-format.md).", ""]
    return "\n".join(parts)


# ----------------------------------------------------------------- getting started
def _getting_started(markdown: str) -> str:
    """Replace the page's two markers with outputs produced now, so they cannot go stale."""
    import contextlib
    import os
    import tempfile

    from typer.testing import CliRunner

    from tinyserve_sim.cli import app

    marker = "<!-- generated: demo excerpt -->"
    if marker not in markdown:
        raise ValueError("getting-started.md lost its marker " + marker)
    result = CliRunner().invoke(app, ["demo"], env={"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    if result.exit_code != 0:
        raise RuntimeError(f"tinyserve-sim demo failed:\n{result.output}")
    lines = result.output.splitlines()
    cut = next(i for i, line in enumerate(lines) if line.startswith("[  3]"))
    excerpt = ["$ tinyserve-sim demo", *(line.rstrip() for line in lines[:cut]), "..."]
    markdown = markdown.replace(marker, "```text\n" + "\n".join(excerpt) + "\n```")

    marker = "<!-- generated: output of the python block above -->"
    if marker not in markdown:
        raise ValueError("getting-started.md lost its marker " + marker)
    block = re.findall(r"```python\n(.*?)```", markdown.split(marker)[0], flags=re.S)[-1]
    out = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="tinyserve-getting-started-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # the block writes state.svg: into a folder that goes away
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block, "getting-started.md", "exec"), {})
        finally:
            os.chdir(cwd)
    text = "\n".join(line.rstrip() for line in out.getvalue().splitlines())
    return markdown.replace(marker, "```text\n" + text + "\n```")


# ----------------------------------------------------------- GPU cells, as recorded
GPU_TUTORIALS = ("04_paged_attention_numpy_to_cuda", "05_query_aware_selection", "06_hunting_a_kernel_bug")
GPU_RECORD = ROOT / "docs" / "records" / "gpu-cells.json"


def on_post_page(output: str, page, config) -> str:
    """Under a GPU cell that skipped (no GPU here), show what it printed where there was one."""
    name = page.file.src_uri.removeprefix("tutorials/").removesuffix(".py")
    skipped = "No CUDA GPU here"
    if name not in GPU_TUTORIALS or skipped not in output:
        return output
    where = output.index(skipped)
    next_cell = output.find('<div class="jp-Cell ', where)
    if next_cell < 0:
        raise ValueError(f"{page.file.src_uri}: no cell after the GPU cell")
    return output[:next_cell] + _gpu_record_html(name) + output[next_cell:]


def _gpu_record_html(name: str) -> str:
    import html
    import json

    record = json.loads(GPU_RECORD.read_text()) if GPU_RECORD.exists() else {"tutorials": {}}
    if name not in record["tutorials"]:  # no record file, or none of this tutorial yet
        return ('<div class="admonition warning"><p class="admonition-title">No GPU record yet</p>'
                "<p>Run <code>python scripts/record_gpu_cells.py</code> on a machine with a CUDA device "
                "and commit <code>docs/records/gpu-cells.json</code>: this page then shows what the GPU "
                "cell printed there.</p></div>")
    cell = record["tutorials"][name]
    device = record["device"]
    title = f"Recorded on a GPU: {device['name']}"
    lines = "\n".join(html.escape(line) for line in cell["lines"])
    verdict = "every comparison held" if cell["all_held"] else "NOT every comparison held"
    return (
        f'<div class="admonition success gpu-record"><p class="admonition-title">{html.escape(title)}</p>'
        "<p>This site was built without a GPU, so the cell above skipped. On a GPU it printed:</p>"
        f"<pre><code>{lines}</code></pre>"
        f"<p>Recorded {html.escape(record['date'])} at commit <code>{html.escape(record['commit'][:12])}</code> "
        f"by <code>{html.escape(record['recorded_with'])}</code> on {html.escape(device['name'])} "
        f"(compute capability {html.escape(device['compute_capability'])}, CUDA driver "
        f"{html.escape(device['driver_cuda_version'])}, CuPy {html.escape(device['cupy'])}): "
        f"{verdict}.</p></div>"
    )
