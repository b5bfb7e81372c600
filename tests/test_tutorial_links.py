"""Every relative link in a tutorial leads to a page the site has.

``mkdocs build --strict`` checks the links of the Markdown pages, but not those
inside the notebooks that mkdocs-jupyter renders from ``tutorials/NN_*.py``: a
broken one there only shows as a 404 on the built site. This test checks them
without building the site, by placing pages as the build does
(``use_directory_urls: true``):

* ``docs/a/b.md`` is the page ``a/b/`` (``docs/a/index.md`` is ``a/``);
* ``tutorials/NN_name.py`` is the page ``tutorials/NN_name/``, so a tutorial links
  to another as ``../NN_other/`` and to a docs page as ``../../a/b/``;
* the pages ``docs/hooks.py`` generates (``File.generated(config, "x.md", ...)``)
  exist too.

An anchor into a docs page must be one of that page's ids (headings, ``{ #id }``).
"""

from __future__ import annotations

import posixpath
import re
from functools import cache
from itertools import pairwise
from pathlib import Path

import markdown
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))

# [text](target) and ![alt](target); the text may run over several lines.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def page_url(md_path: str) -> str:
    """Where the build puts the page of ``docs/<md_path>``: ``a/b.md`` -> ``a/b/``."""
    stem = md_path.removesuffix(".md")
    if stem == "index":
        return ""
    if stem.endswith("/index"):
        return stem.removesuffix("index")
    return stem + "/"


def generated_pages() -> list[str]:
    """The Markdown pages docs/hooks.py adds to the site at build time."""
    return re.findall(r'File\.generated\(config, "([^"]+\.md)"', (DOCS / "hooks.py").read_text())


@cache
def site_pages() -> dict[str, Path | None]:
    """Every page's URL, with its docs source (None for tutorials and generated pages)."""
    pages: dict[str, Path | None] = {
        page_url(p.relative_to(DOCS).as_posix()): p for p in DOCS.rglob("*.md")
    }
    pages.update({page_url(name): None for name in generated_pages()})
    pages.update({f"tutorials/{p.stem}/": None for p in TUTORIALS})
    return pages


@cache
def page_ids(source: Path) -> frozenset[str]:
    """The ids a docs page defines (headings, attribute lists, HTML ids)."""
    html = markdown.markdown(source.read_text(), extensions=["toc", "attr_list", "md_in_html", "tables"])
    return frozenset(re.findall(r'\bid="([^"]+)"', html))


def markdown_cells(path: Path) -> str:
    """The Markdown cells of a jupytext percent script, comment marks removed."""
    cells, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            current = [] if "[markdown]" in line else None
            if current is not None:
                cells.append(current)
        elif current is not None:
            current.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
    return "\n\n".join("\n".join(cell) for cell in cells)


def relative_links(path: Path) -> list[str]:
    targets = LINK.findall(markdown_cells(path))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def broken(tutorial: Path, target: str) -> str | None:
    """Why ``target``, linked from ``tutorial``, is not on the site (None when it is)."""
    where, _, anchor = target.partition("#")
    here = f"tutorials/{tutorial.stem}/"
    resolved = posixpath.normpath(posixpath.join(here, where)) if where else here.rstrip("/")
    if resolved == ".":
        resolved = ""
    elif resolved.startswith(".."):
        return f"{target!r} leaves the site"
    if where.endswith((".md", ".py")):
        return f"{target!r}: in a tutorial, link to the page, not to its source file {resolved!r}"
    url = resolved if resolved == "" or resolved.endswith("/") else resolved + "/"
    if url not in site_pages():
        return f"{target!r} resolves to {url!r}, which is no page of the site"
    source = site_pages()[url]
    if anchor and source is not None and anchor not in page_ids(source):
        return f"{target!r}: {source.relative_to(ROOT)} has no id {anchor!r}"
    return None


def test_the_page_map_is_the_sites() -> None:
    pages = site_pages()
    assert "" in pages and "concepts/memory-waste/" in pages and "kernels/paged_prefill_attention/" in pages
    assert "tutorials/" in pages and "tutorials/01_first_block_table/" in pages
    assert {"players/", "reference/cli/", "reference/trace-format/"} <= set(pages)


def test_the_checker_catches_the_old_broken_forms() -> None:
    tutorial = ROOT / "tutorials" / "10_prefill_with_a_prefix_hit.py"
    for bad in ("03_prefix_caching_and_eviction.py", "../kernels/paged_prefill_attention.md",
                "../concepts/memory-waste/", "../../concepts/no-such-page/", "../../bibliography/#no-such-id"):
        assert broken(tutorial, bad), bad
    for good in ("../03_prefix_caching_and_eviction/", "../../kernels/paged_prefill_attention/", "../",
                 "../../bibliography/#orca"):
        assert broken(tutorial, good) is None, good


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_every_relative_link_of_a_tutorial_resolves(tutorial: Path) -> None:
    links = relative_links(tutorial)
    problems = [why for target in links if (why := broken(tutorial, target))]
    assert not problems, "\n".join(problems)


def test_the_next_links_go_through_every_tutorial_in_order() -> None:
    for tutorial, following in pairwise(TUTORIALS):
        text = markdown_cells(tutorial)
        after_next = text[text.rfind("Next"):] if "Next" in text else ""
        first = LINK.search(after_next)
        assert first and first.group(1) == f"../{following.stem}/", (
            f"{tutorial.name}: its last 'Next' should link first to ../{following.stem}/"
        )
