"""Regenerate docs/dashboard.png: the demo deployment under traffic (labels for half of it,
inputs shifted halfway), photographed by headless chromium.

    .venv/bin/python docs/screenshot.py [SECONDS]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from rendezvous import demo
from rendezvous.hosting.serving import running
from rendezvous.registry import Registry

OUT = Path(__file__).resolve().parent / "dashboard.png"


async def main(seconds: float) -> None:
    home = Path(tempfile.mkdtemp())
    with Registry(home) as reg:
        demo.setup(reg)
    async with running(["demo"], home=home, port=0) as serving:
        url = serving.edge[1]
        sender = asyncio.ensure_future(demo.traffic(url, seconds))
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium",
                                              args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1500, "height": 1400})
            await page.goto(f"{url}/dashboard")
            await sender
            seen = await page.evaluate("window.rendezvousRefreshes")
            await page.wait_for_function(f"window.rendezvousRefreshes > {seen + 1}")
            await page.screenshot(path=str(OUT), full_page=True)
            await browser.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 40.0))
