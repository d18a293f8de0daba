"""`emodiff app` in a real browser: the command serves the bundled pipeline on 127.0.0.1 and headless Chromium
(through selenium) uploads a face and speech, edits a two-emotion timeline and key frames, cancels one request,
samples another with few steps and plays the video. Skips where Gradio, selenium, Chromium or chromedriver is absent
(`.ci/run` installs them)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("selenium")

from selenium.webdriver.common.by import By  # noqa: E402

from emodiff.control.timeline import parse_emotions  # noqa: E402
from emodiff.data.media import load_audio, probe, read_video  # noqa: E402
from emodiff.data.media import SAMPLE_RATE  # noqa: E402
from emodiff.data.store import write_wav  # noqa: E402
from emodiff.data.synthetic import save_render, trained_world, unseen_identities  # noqa: E402
from emodiff.demo import bundled_checkpoint, demo_world  # noqa: E402
from emodiff.errors import EmodiffError  # noqa: E402
from tests.browser import (CHROMEDRIVER, CHROMIUM, chromium, generate_and_wait, open_page, running_app,  # noqa: E402
                           set_cell, set_steps, text_of, upload, wait_for)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                 reason="Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")]
SECONDS, FPS = 1.0, 25


@pytest.fixture(scope="module")
def server():
    with running_app() as (url, seconds):
        print(f"\nemodiff app served its page {seconds:.1f} s after the command started")
        yield url


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def face_and_speech(tmp_path) -> tuple[Path, Path]:
    """A face of the bundled pipeline's world it never saw, and SECONDS of that world's speech."""
    checkpoint = bundled_checkpoint()
    description = trained_world(checkpoint)
    world = demo_world(checkpoint, int(description["size"]), FPS)
    face = save_render(tmp_path / "my_face.png", world, unseen_identities(description, 5)[-1])
    n_frames = int(SECONDS * FPS)
    audio, _ = world.speech(n_frames, np.linspace(0.2, 1.0, n_frames), np.random.default_rng(7))
    write_wav(tmp_path / "my_speech.wav", audio)
    return face, tmp_path / "my_speech.wav"


def test_a_user_edits_the_schedule_cancels_once_and_gets_a_video_with_its_speech(
        server, browser, face_and_speech, tmp_path):
    face, speech = face_and_speech
    open_page(browser, server)  # the schedule preview is drawn before any input
    upload(browser, "face", face)
    upload(browser, "speech", speech)
    wait_for(browser, lambda: "over the 1.00 s of the speech" in text_of(browser, "schedule"))
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#face img"))

    # a typo in the timeline shows the command line's sentence next to it; fixing it clears the sentence
    set_cell(browser, "timeline", 0, 0, "hapy")
    with pytest.raises(EmodiffError) as cli_sentence:
        parse_emotions("hapy@0", int(SECONDS * FPS), FPS)
    wait_for(browser, lambda: str(cli_sentence.value) in text_of(browser, "emotion-note"))
    for row, (emotion, start) in enumerate([("happy", "0"), ("sad", "0.5")]):
        set_cell(browser, "timeline", row, 0, emotion)
        set_cell(browser, "timeline", row, 1, start)
    for row, (time_s, k) in enumerate([("0", "0.1"), ("0.4", "1"), ("0.7", "0.3"), ("1", "0.9")]):
        set_cell(browser, "keyframes", row, 0, time_s)
        set_cell(browser, "keyframes", row, 1, k)
    wait_for(browser, lambda: not text_of(browser, "emotion-note") and not text_of(browser, "intensity-note"))
    assert not text_of(browser, "face-note")  # a render of the pipeline's world: no photo warning

    # a slow request, cancelled while it runs, ends after its current frame without a video; the page goes on
    set_steps(browser, 60)
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, lambda: "frame" in text_of(browser, "status"), 60)
    browser.find_element(By.ID, "cancel").click()
    wait_for(browser, lambda: text_of(browser, "status").startswith("Cancelled after frame"), 120)
    assert not browser.find_elements(By.CSS_SELECTOR, "#video video[src]")

    set_steps(browser, 2)
    video, seconds = generate_and_wait(browser, 180)
    print(f"1 s of video at 2 steps through the browser: {seconds:.1f} s")
    assert text_of(browser, "status").startswith(f"Done: {int(SECONDS * FPS)} frames")
    command = text_of(browser, "command")
    assert "emodiff sample --checkpoint" in command and "--emotion happy@0,sad@0.5" in command
    assert "--intensity 0:0.1,0.4:1,0.7:0.3,1:0.9" in command and "--steps 2" in command

    # the page's video element plays the whole clip, with sound
    wait_for(browser, lambda: browser.execute_script("return arguments[0].readyState", video) >= 1)
    assert abs(browser.execute_script("return arguments[0].duration", video) - SECONDS) < 0.1
    browser.execute_script("arguments[0].muted = false; arguments[0].play()", video)
    wait_for(browser, lambda: browser.execute_script("return arguments[0].ended", video), 30)
    assert browser.execute_script("return arguments[0].error", video) is None
    assert browser.execute_script("return arguments[0].webkitAudioDecodedByteCount", video) > 0
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", video)
    screenshot = tmp_path / "emodiff_app.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")

    # and the served file is that clip: 25 fps frames for the speech's length, the speech as its audio track
    served = tmp_path / "served.mp4"
    with urllib.request.urlopen(video.get_attribute("src"), timeout=30) as response:
        served.write_bytes(response.read())
    info = probe(served)
    assert info.has_audio and abs(info.duration - SECONDS) < 0.1
    assert sum(1 for _ in read_video(served, FPS)) == int(SECONDS * FPS)
    assert abs(len(load_audio(served)) - len(load_audio(speech))) < 0.05 * SAMPLE_RATE
