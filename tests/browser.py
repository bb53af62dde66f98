"""Headless Chromium, driven over the DevTools protocol: what a page shows and plays."""

from __future__ import annotations

import base64
from pathlib import Path

# Run in the page: fetch and decode every <audio> source with the browser's own decoder.
CHECK_AUDIO = """(async () => {
  const ctx = new OfflineAudioContext(1, 1, 24000);
  const results = [];
  for (const a of document.querySelectorAll('audio')) {
    try {
      const r = await fetch(a.src);
      const audio = await ctx.decodeAudioData(await r.arrayBuffer());
      results.push({src: a.getAttribute('src'), status: r.status, seconds: audio.duration});
    } catch (e) { results.push({src: a.getAttribute('src'), error: String(e)}); }
  }
  return results;
})()"""


async def in_browser(chromium: str, url: str, expression: str, profile, width: int = 1280,
                     screenshot: Path | None = None) -> object:
    """Open ``url`` in headless Chromium, ``width`` CSS pixels wide, and evaluate
    ``expression`` there (DevTools protocol); with ``screenshot``, save what it shows."""
    import asyncio

    import aiohttp

    proc = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                page = next(t for t in await r.json() if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                async def call(n: int, method: str, **params) -> dict:
                    await ws.send_json({"id": n, "method": method, "params": params})
                    while True:
                        message = await ws.receive_json()
                        if message.get("id") == n:
                            return message["result"]

                await call(1, "Emulation.setDeviceMetricsOverride", width=width, height=800,
                           deviceScaleFactor=1, mobile=False)
                await call(2, "Page.navigate", url=url)
                for n in range(3, 200):
                    state = await call(n, "Runtime.evaluate", expression="document.readyState")
                    if state["result"]["value"] == "complete":
                        break
                    await asyncio.sleep(0.1)
                result = await call(999, "Runtime.evaluate", expression=expression,
                                    awaitPromise=True, returnByValue=True)
                if screenshot is not None:
                    shot = await call(1000, "Page.captureScreenshot", format="png")
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                return result["result"]["value"]
    finally:
        proc.kill()
        await proc.wait()


# Every player and image of the page, and how wide the page is: what a screen must show.
BOXES = """(() => ({
  width: window.innerWidth, scroll: document.documentElement.scrollWidth,
  boxes: [...document.querySelectorAll('audio, img')].map(e => {
    const r = e.getBoundingClientRect();
    return {tag: e.tagName, left: r.left, right: r.right, width: r.width};
  }),
}))()"""


def assert_fits(result: dict, screenshot: Path) -> None:
    """Every box of BOXES inside the viewport, usable (not squeezed), nothing to scroll."""
    import matplotlib.image

    assert result["width"] == 1280 and result["scroll"] <= 1280, result
    assert result["boxes"], result
    for box in result["boxes"]:
        assert box["left"] >= 0 and box["right"] <= 1280 and box["width"] >= 120, box
    image = matplotlib.image.imread(screenshot)
    assert image.shape[1] == 1280 and image.std() > 0  # a rendered page, not a blank one
