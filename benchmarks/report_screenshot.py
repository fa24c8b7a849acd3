"""Open each competition's `reports/<comp>/index.html` in headless Chromium and screenshot it: does the report
render in a real browser, offline, with its pictures?

Run after `dvc repro` (or `pipeline report <comp>`), from the repository root:

    python benchmarks/report_screenshot.py [--root .] [--browser /usr/bin/chromium]

Needs a Chromium (Debian: `apt-get install chromium`). Network is off for the page (it must need none). Prints,
per report: the screenshot's path and size, how many of the page's images the browser decoded, and the share of
non-blank rows in the screenshot (a page whose pictures failed shows mostly white).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--proxy-server=127.0.0.1:9", "--hide-scrollbars"]  # the proxy makes any network request fail

# Counts images the browser decoded (naturalWidth > 0) and writes the count into the page title for --dump-dom.
PROBE = ("<script>window.onload=()=>{const i=[...document.images];document.title=JSON.stringify("
         "{images:i.length,decoded:i.filter(x=>x.naturalWidth>0).length})}</script>")


def chromium(browser: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "")
    args = parser.parse_args()
    if not args.browser:
        print("no Chromium found: install it (Debian: apt-get install chromium) or pass --browser", file=sys.stderr)
        return 2
    pages = sorted(args.root.glob("reports/*/index.html"))
    if not pages:
        print("no reports/<comp>/index.html: run `dvc repro` or `pipeline report <comp>` first", file=sys.stderr)
        return 2
    failed = 0
    for page in pages:
        with tempfile.TemporaryDirectory() as tmp:
            probe = Path(tmp) / "probe.html"
            probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
            dom = chromium(args.browser, ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], Path(tmp) / "a")
            title = dom.stdout.split("<title>", 1)[-1].split("</title>", 1)[0]
            counts = json.loads(title) if title.startswith("{") else {"images": "?", "decoded": "?"}
            shot = page.with_name("screenshot.png")
            start = time.perf_counter()
            result = chromium(args.browser, ["--window-size=1300,6000", f"--screenshot={shot}", page.resolve().as_uri()],
                              Path(tmp) / "b")
            seconds = time.perf_counter() - start
        if result.returncode or not shot.is_file():
            print(f"{page}: Chromium failed ({result.returncode}): {result.stderr[-500:]}")
            failed += 1
            continue
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
        inked = float((pixels.min(axis=1) < 200).mean())  # rows holding anything darker than near-white
        ok = counts["images"] == counts["decoded"] and counts["images"] not in (0, "?")
        failed += not ok
        print(f"{page}: screenshot {shot} {pixels.shape[1]}x{pixels.shape[0]} in {seconds:.1f} s; images decoded "
              f"{counts['decoded']}/{counts['images']}; rows with content {inked:.0%} -> {'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
