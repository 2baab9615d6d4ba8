"""The page at / in a real browser (Debian's chromium driven by Playwright) against a real
server with the built-in base: upload a clip and see its transcript stream in; record from a
fake microphone and see that transcript; download the subtitles. Screenshots of both go to
``$WHISPERTUNE_SCREENSHOTS`` (default: the test's tmp dir) to be looked at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("WHISPERTUNE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fake_microphone(jfk: Path, tmp_path: Path) -> Path:
    """The first 4.5 s of the JFK clip ("And so my fellow Americans, ask not") as the WAV
    chromium plays as its microphone."""
    audio, rate = sf.read(str(jfk), dtype="float32")
    wav = tmp_path / "microphone.wav"
    sf.write(str(wav), np.asarray(audio[: int(4.5 * rate)]), rate, subtype="PCM_16")
    return wav


def test_upload_and_record_in_a_real_browser(base_server, jfk, tmp_path, screenshots):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    mic = fake_microphone(jfk, tmp_path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--use-fake-device-for-media-stream",
                  "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={mic}"],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 860},
                                    accept_downloads=True)
            page.goto(base_server.url + "/")
            sync_api.expect(page.locator("#model")).to_contain_text("builtin:base")

            # upload: segments appear with their times, then "Done"
            page.set_input_files("#file", str(jfk))
            page.wait_for_selector("#status.done", timeout=180_000)
            texts = page.locator("#segments .text").all_inner_texts()
            times = page.locator("#segments time").all_inner_texts()
            assert "ask not what your country can do for you" in " ".join(texts)
            assert len(times) == len(texts) >= 1 and times[0].startswith("0:0")
            page.wait_for_timeout(400)  # the rows' fade-in, for the screenshot
            page.screenshot(path=str(screenshots / "upload.png"), full_page=True)
            with page.expect_download() as download:
                page.click("#dl-srt")
            srt = Path(download.value.path()).read_text(encoding="utf-8")
            assert download.value.suggested_filename == "jfk.srt"
            assert srt.startswith("1\n00:00:") and "ask not" in srt

            # record from the (fake) microphone for 5 s, stop, and see its transcript
            page.click("#record")
            sync_api.expect(page.locator("#status")).to_contain_text("Recording")
            page.wait_for_timeout(5_000)
            page.click("#record")
            sync_api.expect(page.locator("#status")).to_contain_text("recording.", timeout=30_000)
            page.wait_for_selector("#status.done", timeout=180_000)
            recorded = " ".join(page.locator("#segments .text").all_inner_texts())
            assert "fellow America" in recorded, recorded
            page.wait_for_timeout(400)
            page.screenshot(path=str(screenshots / "record.png"), full_page=True)

            # the API docs render with every request off the server refused (no CDN)
            outside: list[str] = []
            page.route("**/*", lambda route: route.continue_()
                       if route.request.url.startswith(base_server.url)
                       else (outside.append(route.request.url), route.abort()))
            page.goto(base_server.url + "/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            assert page.locator(".opblock").count() >= 6 and not outside, outside
            sync_api.expect(page.locator("body")).to_contain_text("/recognition_stream")
        finally:
            browser.close()
    print(f"screenshots: {screenshots}")
