"""Screenshots of the review page for the README, from a real run.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--width 1280 --height 800]

Starts what the browser tests start (tests/browser/stack.py: InfluxDB 1.x, the simulator with a
CNC whose spindle bearing wears and here a conveyor that jams too, ``factory-agent run``), waits
for the agent's episodes and a little longer so the plot shows the fault growing, confirms the
jam through its page as a maintainer would, then saves ``episode.png`` (the CNC's) and
``inbox.png`` at a tablet's size with Debian's headless Chromium. About a minute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser.stack import CHROMIUM, Stack, chromium  # noqa: E402


def shoot(browser: Any, url: str, episode_id: str, jam_id: str, out: Path) -> None:
    """The CNC's episode page; the conveyor's jam confirmed through its page; the inbox."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415 (selenium: a dev extra)

    browser.get(f"{url}/anomalies/{episode_id}")
    browser.execute_script("return document.querySelector('img.plot').decode()")
    browser.save_screenshot(str(out / "episode.png"))
    browser.get(f"{url}/anomalies/{jam_id}")
    browser.find_element(By.ID, "by").send_keys("Linh (maintenance)")
    browser.find_element(By.CSS_SELECTOR, 'input[name=verdict][value="confirmed"]').click()
    browser.find_element(By.ID, "note").send_keys("idler set seized; replaced")
    browser.find_element(By.CSS_SELECTOR, ".ack button[type=submit]").click()
    browser.get(url + "/")
    browser.save_screenshot(str(out / "inbox.png"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--after-s", type=float, default=15.0, help="wait after the episode opens")
    args = p.parse_args()
    if not CHROMIUM.exists():
        sys.stderr.write(f"screenshots: {CHROMIUM} not found: run `make system-deps`\n")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        stack = Stack(Path(tmp), plant=True)
        try:
            stack.start()
            stored = stack.wait_episode(timeout_s=120)
            jam = stack.wait_episode(timeout_s=120, machine="conveyor-01")
            time.sleep(args.after_s)
            browser = chromium(Path(tmp) / "profile", args.width, args.height)
            try:
                shoot(browser, stack.url, stored.id, jam.id, args.out)
            finally:
                browser.quit()
        finally:
            stack.stop()
    for name in ("inbox.png", "episode.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
