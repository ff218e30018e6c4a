"""The README's playground screenshot: trimode serve (the default model) on 127.0.0.1, the four-way race
on one prompt in headless Chromium (Debian's), saved as docs/playground.png.

    python scripts/playground_screenshot.py [--model DIR] [--prompt TEXT] [--out docs/playground.png]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the default model)")
    p.add_argument("--prompt", default="Write a Python function that checks whether a number is prime.")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--block-length", type=int, default=8)
    p.add_argument("--out", default="docs/playground.png")
    args = p.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "trimode.cli", "serve", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd + (["--model", args.model] if args.model else []))
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("body[data-state=ready]")
            page.fill("#prompt", args.prompt)
            page.fill("#max-tokens", str(args.max_tokens))
            page.fill("#block-length", str(args.block_length))
            page.select_option("#mode", "race")
            page.click("#run")
            page.wait_for_selector("body[data-state=done]", timeout=600_000)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(args.out)
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
