"""`emodiff app` measured in one run, through headless Chromium as two users would use it:

1. seconds from `emodiff app` to a served page
2. one demo-length video (the first example face, the example rising speech, the page's default timeline and key
   frames — those of `emodiff demo` —, DDIM, --steps, expression guidance 2) through the page, and the same video
   made by the `emodiff sample` command the page shows, run in a fresh process in the unzipped download
   (ratio page ÷ command; the command's time includes starting Python and loading the pipeline)
3. what a second user who clicks Generate one second after the first sees while waiting (the queue position
   Gradio shows), and how long the second video takes from that click

Needs the app extra, selenium, chromium and chromium-driver. Run: python benchmarks/bench_app.py [--steps 10]
"""

from __future__ import annotations

import argparse
import io
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selenium.webdriver.common.by import By  # noqa: E402

from emodiff.data.media import read_video  # noqa: E402
from tests.browser import (chromium, generate_and_wait, open_page, running_app, set_steps, text_of,  # noqa: E402
                           wait_for)


def choose_examples(driver, steps: int) -> None:
    """Click the first example face and the rising example speech, and set the steps."""
    driver.find_elements(By.CSS_SELECTOR, "#face-examples button")[0].click()
    next(b for b in driver.find_elements(By.CSS_SELECTOR, "#speech-examples button") if "rising" in b.text).click()
    wait_for(driver, lambda: "over the 4.00 s of the speech" in text_of(driver, "schedule"))
    set_steps(driver, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with running_app() as (url, startup), tempfile.TemporaryDirectory() as tmp:
        print(f"1. emodiff app → served page: {startup:.1f} s")
        first = chromium()
        try:  # one user alone
            open_page(first, url)
            choose_examples(first, args.steps)
            assert not text_of(first, "face-note"), "an example face must not get the photo warning"
            _, page_seconds = generate_and_wait(first, 600)
            archive_url = first.find_element(By.CSS_SELECTOR, "#archive a").get_attribute("href")
            second = chromium()
            try:  # then two users: the second clicks Generate one second after the first
                open_page(second, url)
                choose_examples(second, args.steps)
                first.find_element(By.ID, "generate").click()
                time.sleep(1.0)
                second.find_element(By.ID, "generate").click()
                second_started = time.monotonic()
                queued = wait_for(second, lambda: next((line for line in text_of(second, "status").splitlines()
                                                        if "queue" in line), None), 30)
                second.save_screenshot(str(Path(tempfile.gettempdir()) / "emodiff_app_second_user.png"))
                wait_for(second, lambda: "Done" in text_of(second, "status"), 900)
                second_seconds = time.monotonic() - second_started
            finally:
                second.quit()
        finally:
            first.quit()
        folder = Path(tmp) / "download"
        with urllib.request.urlopen(archive_url, timeout=60) as response:
            zipfile.ZipFile(io.BytesIO(response.read())).extractall(folder)
        command = (folder / "command.txt").read_text().strip().splitlines()[-1]
        page_frames = np.stack(list(read_video(folder / "talking_head.mp4", 25)))
        (folder / "talking_head.mp4").unlink()
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "emodiff", *shlex.split(command)[1:], "--no-progress"], cwd=folder,
                       check=True, capture_output=True)
        command_seconds = time.monotonic() - started
        same = np.array_equal(np.stack(list(read_video(folder / "talking_head.mp4", 25))), page_frames)
    print(f"2. {len(page_frames)} frames at {args.steps} steps: page {page_seconds:.1f} s, "
          f"`emodiff sample` {command_seconds:.1f} s (ratio {page_seconds / command_seconds:.2f}); "
          f"same frames: {'yes' if same else 'NO'}\n   command: {command}")
    print(f"3. the second user, while the first video is made, sees: {queued!r}; "
          f"their video came {second_seconds:.1f} s after their click")


if __name__ == "__main__":
    main()
