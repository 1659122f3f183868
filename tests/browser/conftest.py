"""Browser tests of the web console: Playwright for Python driving the system's Chromium.

Chromium comes from the system's packages (Debian ``chromium``; ``.ci/run`` installs it when it is
missing); Playwright never downloads a browser here (``executable_path``). Without Chromium the
suite FAILS with a message saying how to install it, like the emulator gate: ``make test`` never
passes by skipping it.

Screenshots are test artefacts: they go to a directory under pytest's temporary directory (printed
at the end of the run), and also to ``$VENDING_CONSOLE_SCREENSHOTS`` when set (``docs/console`` keeps
the current ones: ``VENDING_CONSOLE_SCREENSHOTS=docs/console pytest tests/browser``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_HELP = (
    "the browser tests need Chromium from the system's packages (Debian: apt-get install -y "
    "chromium; .ci/run installs it when missing). Playwright never downloads a browser here."
)
SCREENSHOTS_VAR = "VENDING_CONSOLE_SCREENSHOTS"
_SHOTS: list[Path] = []


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail(f"chromium not found on PATH: {CHROMIUM_HELP}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed ({exc}): pip install -r requirements-dev.txt", pytrace=False)
    pw = sync_playwright().start()
    # /dev/shm is small in containers (Chromium's tabs crash without this); its sandbox refuses to run as root.
    args = ["--disable-dev-shm-usage", "--disable-gpu", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    try:
        browser = pw.chromium.launch(executable_path=executable, args=args)
    except Exception as exc:  # noqa: BLE001 - any launch failure is the same missing prerequisite
        pw.stop()
        pytest.fail(f"chromium at {executable} did not start: {exc}\n{CHROMIUM_HELP}", pytrace=False)
    yield browser
    browser.close()
    pw.stop()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture
def screenshot(screenshot_dir: Path) -> Any:
    """``screenshot(page, name)``: a PNG artefact of the page (and a copy in $VENDING_CONSOLE_SCREENSHOTS)."""

    def take(page: Any, name: str) -> Path:
        path = screenshot_dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=False)
        _SHOTS.append(path)
        extra = os.environ.get(SCREENSHOTS_VAR)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / path.name)
        return path

    return take


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SHOTS:
        terminalreporter.section("console screenshots", sep="-")
        terminalreporter.write_line(f"{len(_SHOTS)} screenshot(s) in {_SHOTS[0].parent}")
