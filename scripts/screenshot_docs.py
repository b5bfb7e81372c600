#!/usr/bin/env python3
"""Open the built documentation site in a real browser and take screenshots.

Builds the site (``mkdocs build --strict``) unless ``--site DIR`` names a built
one, serves it on 127.0.0.1 with :mod:`http.server` in a background thread, and
has headless Chromium (Debian's ``chromium`` package) screenshot the home page,
a tutorial page and the scenario player. Everything stops by itself: the server when the script
ends, each Chromium run after ``--timeout`` seconds at most.

    python scripts/screenshot_docs.py                   # build, serve, screenshot
    python scripts/screenshot_docs.py --site site --out shots --page reference/cli/

Exit status: 0 when every screenshot was written and is a non-trivial PNG.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAGES = ("", "tutorials/01_first_block_table/", "players/")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """Debian's chromium first, then anything called chromium or chrome on PATH."""
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def build_site(site_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        check=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


def serve(site_dir: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``site_dir`` on an ephemeral port of 127.0.0.1; return the server and its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def screenshot(chromium: str, url: str, path: Path, size: str, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="tinyserve-chromium-") as profile:
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            f"--screenshot={path}",
            "--virtual-time-budget=5000",  # let fonts and scripts settle before the shot
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not path.exists():
        raise RuntimeError(f"chromium failed on {url} (exit {result.returncode}):\n{result.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, help="a built site to serve (default: build one in a temp folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "site-screenshots", help="where the PNGs go")
    parser.add_argument("--page", action="append", help="page path to shoot (repeatable); default: home, tutorial 1 and the scenario player")
    parser.add_argument("--window-size", default="1280,2000")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per screenshot, at most")
    args = parser.parse_args(argv)

    chromium = find_chromium()
    if chromium is None:
        print("no chromium found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tinyserve-site-") as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build_site(site)
        server, base = serve(site)
        try:
            written = []
            for page in args.page or DEFAULT_PAGES:
                name = (page.strip("/").replace("/", "_") or "home") + ".png"
                path = args.out / name
                path.unlink(missing_ok=True)
                screenshot(chromium, base + page, path, args.window_size, args.timeout)
                if path.stat().st_size < 10_000:
                    raise RuntimeError(f"{path} is suspiciously small ({path.stat().st_size} bytes)")
                written.append(path)
                print(f"{base}{page} -> {path}")
        finally:
            server.shutdown()
            server.server_close()
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
