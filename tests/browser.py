"""Drive `emodiff app` as a user does, in headless Chromium through selenium: start the command on a free port,
open the page, upload files, type into table cells. Used by tests/test_app_browser.py and benchmarks/bench_app.py;
needs selenium, Debian's `chromium` and `chromium-driver` (their absence is the caller's to handle)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
TIMEOUT_SCREENSHOT = Path(tempfile.gettempdir()) / "emodiff_app_timeout.png"


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


@contextmanager
def running_app(*arguments: str, timeout: float = 180) -> Iterator[tuple[str, float]]:
    """`python -m emodiff app --port P ARGUMENTS` on a free port: yields its URL and the seconds from the command's
    start to a served page; stops it with Ctrl+C (SIGINT) at the end."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "emodiff", "app", "--port", str(port), *arguments],
                               env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() - started > timeout:
                process.kill()
                raise RuntimeError(f"emodiff app did not serve {url}:\n{process.stdout.read()}")
            time.sleep(0.25)
        yield url, time.monotonic() - started
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def chromium(width: int = 1400, height: int = 2300) -> Any:
    """A headless Chromium that plays media without a user gesture."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def wait_for(driver: Any, condition: Callable[[], Any], timeout: float = 30) -> Any:
    """`condition()` once it is true; on a timeout, an AssertionError with the page's status line (a screenshot is
    saved to TIMEOUT_SCREENSHOT)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda _: condition())
    except TimeoutException:
        driver.save_screenshot(str(TIMEOUT_SCREENSHOT))
        raise AssertionError(f"timed out after {timeout} s; status line {text_of(driver, 'status')!r}; "
                             f"screenshot {TIMEOUT_SCREENSHOT}") from None


def open_page(driver: Any, url: str) -> None:
    """Load the page and wait for the schedule preview it draws before any input."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#schedule img"))


def upload(driver: Any, element_id: str, path: Path) -> None:
    """Give a file to the upload field of a component, as choosing it in the file dialog does."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"#{element_id} input[type=file]").send_keys(str(path))


def set_cell(driver: Any, table: str, row: int, column: int, text: str) -> None:
    """Type `text` into a table cell: double-click, select all, type, Enter."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    editor_selector = f"#{table} textarea[aria-label='Edit cell']"
    cell = driver.find_element(By.CSS_SELECTOR, f"#{table} [data-testid='cell-{row}-{column}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    ActionChains(driver).double_click(cell).perform()
    editor = wait_for(driver, lambda: driver.find_element(By.CSS_SELECTOR, editor_selector), 5)
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys(text, Keys.ENTER)
    wait_for(driver, lambda: not driver.find_elements(By.CSS_SELECTOR, editor_selector), 5)


def set_steps(driver: Any, steps: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(steps), Keys.TAB)


def generate_and_wait(driver: Any, timeout: float = 300) -> tuple[Any, float]:
    """Click Generate; the video element once the request is done, and the seconds it took. (The same settings
    give the same file, which Gradio serves under the same URL, so "done" is read from the status line.)"""
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    driver.find_element(By.ID, "generate").click()
    wait_for(driver, lambda: not text_of(driver, "status").startswith("Done"), 10)
    wait_for(driver, lambda: text_of(driver, "status").startswith("Done"), timeout)
    video = wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#video video[src]"), 10)[0]
    return video, time.monotonic() - started
