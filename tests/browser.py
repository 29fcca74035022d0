"""Headless Chromium for the report tests: Debian's browser, driven by Playwright.

Playwright's Python package is used only as a driver for the system's
``/usr/bin/chromium`` (Debian's ``chromium`` package, installed here with
apt-get when it is missing and we are root); it never downloads a browser of
its own. When Chromium cannot be had, the tests that need it are skipped with
the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_TIMEOUT_S = 900


def ensure_chromium() -> str:
    """The Chromium executable, installed with apt-get if needed; skips the test with the reason if it cannot be."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): "
                    f"install Debian's chromium package to run this test")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{' '.join(cmd)}` took over {INSTALL_TIMEOUT_S} s: Chromium could not be installed")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            pytest.skip(f"`{' '.join(cmd)}` failed, so Chromium could not be installed: {' / '.join(tail)}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"apt-get installed chromium but {CHROMIUM} is not there")
    return CHROMIUM


@dataclass(frozen=True)
class LoadedImage:
    alt: str
    natural_width: int
    natural_height: int


class Browser:
    """One headless Chromium (a fresh profile, no network use) for several pages."""

    def __init__(self, executable: str):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=executable, args=FLAGS)

    def images(self, page_path: Path, screenshot: Path | None = None,
               viewport: tuple[int, int] = (1240, 1700)) -> list[LoadedImage]:
        """Open a local page, wait for it to load, and report every <img> as the browser decoded it."""
        page = self._browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        try:
            page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
            found = page.evaluate("""() => Array.from(document.images).map(
                i => ({alt: i.alt, w: i.complete ? i.naturalWidth : 0, h: i.complete ? i.naturalHeight : 0}))""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
            return [LoadedImage(i["alt"], i["w"], i["h"]) for i in found]
        finally:
            page.close()

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()
