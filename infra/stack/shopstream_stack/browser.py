"""Headless Chromium (Debian's package) driven by Playwright: the dashboard's browser test
and `invoke screenshot` use it.

Playwright's own browser download is not reachable from our machines, so it drives the
system's chromium (installed by `invoke setup` for the tests). The flags keep Chromium
from calling Google's services, which a closed network refuses many times a second.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .process import StackError

if TYPE_CHECKING:
    from playwright.sync_api import Page

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise StackError("chromium is not installed: `invoke setup --tests` installs Debian's package")
    return path


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """A Playwright page in a fresh headless Chromium profile (closed afterwards)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="shopstream-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium_path(),
            headless=True,
            args=ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
