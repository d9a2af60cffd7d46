"""Take docs/dashboard.png: the dashboard of a busy cluster, in headless Chromium.

    python docs/dashboard_screenshot.py [OUT.png]

Starts a private 4-engine cluster and a dashboard, runs a load-balanced map (with a
few failures, a retried task and a timed-out one), and screenshots the page while
the map runs. Needs Playwright (pip) and Debian's chromium (.ci/services/chromium.sh).
"""

import random
import sys
import time
from pathlib import Path

import cohort
from cohort.dashboard import Dashboard

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def work(i):
    import random
    import time
    t = time.monotonic() + random.uniform(0.05, 0.6)
    x = 0
    while time.monotonic() < t:  # busy, so the engines' CPU shows
        x += sum(range(1000))
    if i % 37 == 5:
        raise ValueError(f"item {i}: negative pressure in cell {i * 7 % 101}")
    return i * i


def flaky(path):
    import os
    if not os.path.exists(path):  # fails the first time only: shows as retried
        open(path, "w").close()
        raise RuntimeError("transient failure")
    return "ok"


def main(out: str) -> None:
    from playwright.sync_api import sync_playwright
    with cohort.Cluster(n=4) as rc:
        rc.wait_for_engines(4)
        dash = Dashboard(rc.connection_file, port=0, period=0.5).start()
        try:
            lv = rc.load_balanced_view()
            warm = lv.map(work, range(40))
            time.sleep(4)
            lv.apply(flaky, str(Path(rc.connection_file).parent / "flaky"), retries=2)
            lv.apply(time.sleep, 5, timeout=1)
            amr = lv.map(work, range(40, 400))
            random.seed(1)
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = b.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(dash.url)
                page.locator('#engines tr[data-engine="3"]').wait_for()
                time.sleep(12)
                page.locator("#failures details").first.locator("summary").click()
                time.sleep(1)
                page.screenshot(path=out, full_page=True)
                b.close()
            rc.abort()
            del warm, amr
        finally:
            dash.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("dashboard.png")))
