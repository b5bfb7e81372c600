"""The interactive trace player (``trace FILE --html OUT.html``) shows, frame by frame, the simulator's state.

The browser test opens generated players in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by Selenium), steps forward with
the buttons and back with the arrow keys, and compares what the page shows at
each frame with the snapshot the simulator itself reports after that
operation. The expected states are computed here from the trace, independently
of the page's JSON.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyserve_sim.cli import app
from tinyserve_sim.control.records import Snapshot
from tinyserve_sim.control.trace import Trace
from tinyserve_sim.render import player_data, player_html, write_player
from tinyserve_sim.scenarios import SCENARIOS, get_scenario

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,900")


def expected_frames(trace: Trace) -> list[tuple[Snapshot, str]]:
    """(snapshot, explanation) before any operation, then after each one, straight from the simulator."""
    replay = trace.replay()
    frames = [(replay.manager.snapshot(), "")]
    for record in replay:
        frames.append((replay.manager.snapshot(), f"[{record.index}] {record.explain()}"))
    return frames


def shown_state(snap: Snapshot) -> dict:
    """What the page must show for ``snap``, in the shape the browser test reads it."""
    evictable = set(snap.evictable)
    blocks = []
    for block, ref in enumerate(snap.ref_counts):
        kind = "shared" if ref > 1 else "owned" if ref == 1 else "cached" if block in evictable else "free"
        blocks.append({"id": str(block), "kind": kind, "ref": str(ref)})
    return {
        "tables": [{"seq": repr(s.seq_id), "tokens": f"{s.num_tokens} tok", "blocks": [str(b) for b in s.block_table]}
                   for s in snap.sequences],
        "blocks": blocks,
        "free_queue": [str(b) for b in snap.free_queue],
        "evictable": [str(b) for b in snap.evictable],
    }


# --------------------------------------------------------------------------- without a browser
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_player_data_is_every_snapshot(name):
    trace = get_scenario(name).trace()
    data = player_data(trace)
    expected = expected_frames(trace)
    assert len(data["frames"]) == len(trace.ops) + 1 == len(expected)
    for frame, (snap, _) in zip(data["frames"], expected):
        state = frame["state"]
        assert [(s["id"], s["tokens"], s["table"]) for s in state["sequences"]] == [
            (s.seq_id, s.num_tokens, list(s.block_table)) for s in snap.sequences]
        assert state["free_queue"] == list(snap.free_queue)
        assert state["evictable"] == list(snap.evictable)
        assert [b["ref"] for b in state["blocks"]] == list(snap.ref_counts)


def test_a_sequence_keeps_its_colour_for_its_whole_life():
    data = player_data(get_scenario("tour").trace())
    seen: dict[str, int] = {}
    for frame in data["frames"]:
        for seq in frame["state"]["sequences"]:
            assert seen.setdefault(seq["id"], seq["color"]) == seq["color"], seq["id"]
    assert len(set(seen.values())) > 1


def test_player_page_is_self_contained(tmp_path):
    page = player_html(get_scenario("tour").trace())
    assert not re.search(r"https?://|\bsrc=|<link\b|@import", page), "the player must not load anything"
    embedded = re.search(r'<script id="player-data" type="application/json">(.*?)</script>', page, re.S)
    assert json.loads(embedded.group(1))["header"]["name"] == "tour"
    out = write_player(get_scenario("tour").trace(), tmp_path / "tour.html")
    assert out.read_text() == page


def test_cli_writes_the_player(tmp_path):
    trace = tmp_path / "ev.jsonl"
    runner = CliRunner()
    assert runner.invoke(app, ["scenarios", "eviction", "--write", str(trace)]).exit_code == 0
    html = tmp_path / "ev.html"
    result = runner.invoke(app, ["trace", str(trace), "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "wrote the player" in result.output
    assert html.read_text().startswith("<!DOCTYPE html>")


# ------------------------------------------------------------------------------ in a browser
READ_PAGE = """
const text = (e) => e.textContent.trim();
return {
  frame: document.getElementById("position").dataset.frame,
  explain: text(document.getElementById("explain")),
  tables: [...document.querySelectorAll("#tables tr[data-seq]")].map((row) => ({
    seq: text(row.querySelector("th")), tokens: text(row.querySelector("td.tokens")),
    blocks: [...row.querySelectorAll(".cell")].map(text),
    colors: [...row.querySelectorAll(".cell")].map((c) => getComputedStyle(c).backgroundColor)})),
  blocks: [...document.querySelectorAll("#memory .block")].map((b) => ({
    id: text(b.querySelector(".id")), kind: b.dataset.kind,
    ref: b.querySelector(".ref") ? text(b.querySelector(".ref")).slice(1) : (b.dataset.kind === "owned" ? "1" : "0"),
    color: getComputedStyle(b).backgroundColor})),
  free_queue: [...document.querySelectorAll("#free-queue li")].map(text),
  evictable: [...document.querySelectorAll("#evictable li")].map(text),
};
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not HAVE_BROWSER:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs Selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def compare(page: dict, snap: Snapshot, explain: str, frame: int) -> None:
    want = shown_state(snap)
    assert page["frame"] == str(frame)
    if frame:
        assert page["explain"] == explain
    assert [{k: t[k] for k in ("seq", "tokens", "blocks")} for t in page["tables"]] == want["tables"]
    assert [{k: b[k] for k in ("id", "kind", "ref")} for b in page["blocks"]] == want["blocks"]
    assert page["free_queue"] == want["free_queue"]
    assert page["evictable"] == want["evictable"]
    # An owned block has its sequence's colour, the one its block-table cells have.
    owner_color = {}
    for table in page["tables"]:
        for block, color in zip(table["blocks"], table["colors"]):
            if snap.ref_counts[int(block)] == 1:
                owner_color[block] = color
    for block in page["blocks"]:
        if block["kind"] == "owned":
            assert block["color"] == owner_color[block["id"]]


@pytest.mark.parametrize("name", ["tour", "eviction", "beam-search"])
def test_player_in_a_real_browser(browser, tmp_path, name):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    trace = get_scenario(name).trace()
    frames = expected_frames(trace)
    path = write_player(trace, tmp_path / f"{name}.html")
    browser.get(path.as_uri())
    forward = browser.find_element(By.ID, "forward")
    colors: dict[str, str] = {}
    # Forward with the button, frame by frame, to the end.
    for frame, (snap, explain) in enumerate(frames):
        if frame:
            forward.click()
        page = browser.execute_script(READ_PAGE)
        compare(page, snap, explain, frame)
        for table in page["tables"]:  # a sequence's colour never changes while it lives
            own = [c for b, c in zip(table["blocks"], table["colors"]) if snap.ref_counts[int(b)] == 1]
            for color in own:
                assert colors.setdefault(table["seq"], color) == color, table["seq"]
    assert not forward.is_enabled()
    # Back with the left arrow key, to the start.
    body = browser.find_element(By.TAG_NAME, "body")
    for frame in range(len(frames) - 2, -1, -1):
        body.send_keys(Keys.ARROW_LEFT)
        compare(browser.execute_script(READ_PAGE), *frames[frame], frame)
    assert not browser.find_element(By.ID, "back").is_enabled()
    # End jumps to the last frame, Home back to the first.
    body.send_keys(Keys.END)
    compare(browser.execute_script(READ_PAGE), *frames[-1], len(frames) - 1)
    body.send_keys(Keys.HOME)
    compare(browser.execute_script(READ_PAGE), *frames[0], 0)
