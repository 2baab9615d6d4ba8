"""End to end in a real browser (Debian chromium driven by Playwright) on loopback: upload a
manifest with a broken line and see the line named, split good data, load a preset, start a
LoRA run on a tiny model, watch the loss curve get points, stop (a checkpoint is left, the UI
stays up), resume, reload the page and see it re-attach, then evaluate and export the result.
A screenshot of each tab goes to $WHISPERTUNE_SCREENSHOTS (default: the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.train.conftest import write_manifest
from tests.webui.conftest import FAST_FLAGS

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def _wait_text(page, selector: str, *needles: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = _text(page, selector)
        if any(n in text for n in needles):
            return text
        time.sleep(0.3)
    raise AssertionError(f"{selector}: none of {needles} in {text!r}")


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Enter")


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    time.sleep(0.5)


def test_data_train_watch_stop_resume_reload_evaluate_export(tiny_model, tmp_path):
    from whispertune.webui.app import launch

    shots = Path(os.environ.get("WHISPERTUNE_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    runs = tmp_path / "runs"
    good = write_manifest(tmp_path / "clips.jsonl", 10)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good.read_text(encoding="utf-8") + '{"audio": {"path": \n',
                      encoding="utf-8")
    preset = tmp_path / "fast.yaml"
    flags = dict(zip(FAST_FLAGS[::2], FAST_FLAGS[1::2], strict=True))
    preset.write_text(
        f"model: {tiny_model}\nmax-steps: 16\neval-steps: 8\nmethod: lora\n"
        + "".join(f"{k[2:]}: {v}\n" for k, v in flags.items()), encoding="utf-8")
    port = _free_port()
    demo = launch(runs, port=port, block=False)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#manifest", timeout=60_000)

            # Data: an uploaded manifest with a broken last line is named by file:line
            page.locator("#uploads input[type=file]").set_input_files(str(broken))
            time.sleep(1.0)
            page.locator("#make-manifest").click()
            _wait_text(page, "#data-note", "uploaded manifest")
            page.locator("#validate").click()
            problems = _wait_text(page, "#problems", "broken.jsonl:11")
            assert "error" in problems and "broken.jsonl:10" not in problems
            assert "fix the errors" in _text(page, "#validate-summary")
            # good data from a path on this machine, split into train and test
            _fill(page, "data-source", str(good))
            page.locator("#make-manifest").click()
            _wait_text(page, "#data-note", "using the manifest")
            page.get_by_role("tab", name="Split").click()
            page.locator("#split").click()
            _wait_text(page, "#split-note", "9 clips")
            assert "clips.train.jsonl" in _text(page, "#split-note")
            page.screenshot(path=str(shots / "1-data.png"), full_page=True)

            # Train: a preset (the YAML --config reads) fills the form; the command follows
            _tab(page, "2 · Train")
            with page.expect_file_chooser() as chooser:
                page.locator("#preset-upload").click()
            chooser.value.set_files(str(preset))
            command = _wait_text(page, "#command", "--max-steps 16")
            assert "clips.train.jsonl" in command and "clips.test.jsonl" in command
            assert "--pack-seconds 0.0" in command and f"--model {tiny_model}" in command
            _wait_text(page, "#command-check", "CLI accepts")
            page.screenshot(path=str(shots / "2-train.png"), full_page=True)
            page.locator("#start").click()

            # Watch: the run's loss curve gets points
            _wait_text(page, "#run-status", "running", timeout=60)
            status = _wait_text(page, "#run-status", "loss ", timeout=150)
            run = next(runs.glob("lora_*"))
            assert page.locator("#loss-plot canvas, #loss-plot svg").count() > 0, status
            page.screenshot(path=str(shots / "3-watch-running.png"), full_page=True)

            # Stop: the CLI's clean stop leaves a checkpoint; the UI stays up
            page.locator("#stop").click()
            _wait_text(page, "#run-action", "stopping")
            _wait_text(page, "#run-status", "stopped", timeout=120)
            assert (run / "latest").is_file()
            stopped_at = (run / "latest").read_text().strip()
            assert (run / "checkpoints" / stopped_at).is_dir()
            assert "resume with:" in _text(page, "#run-log")

            # Resume, then reload the page mid-run: it re-attaches to the running run
            page.locator("#resume").click()
            _wait_text(page, "#run-action", "resumed")
            _wait_text(page, "#run-status", "running")
            page.reload()
            page.wait_for_selector("#manifest", timeout=60_000)
            _tab(page, "3 · Watch runs")
            _wait_text(page, "#run-status", "running", "finished", timeout=60)
            _wait_text(page, "#run-status", "finished", timeout=240)
            assert (run / "best" / "adapter_config.json").is_file()
            _wait_text(page, "#runs-table", run.name, timeout=20)
            page.screenshot(path=str(shots / "3-watch-finished.png"), full_page=True)

            # Evaluate and export the run's best/
            _tab(page, "4 · Evaluate · Export · Try")
            _fill(page, "tool-model", str(run / "best"))
            _fill(page, "eval-manifest", str(tmp_path / "clips.test.jsonl"))
            page.locator("#evaluate").click()
            summary = _wait_text(page, "#eval-summary", "CER", "❌", timeout=180)
            assert "CER" in summary and "on 1 clips" in summary, summary
            page.screenshot(path=str(shots / "4-evaluate.png"), full_page=True)
            page.get_by_role("tab", name="Export", exact=True).click()
            page.locator("#export").click()
            note = _wait_text(page, "#export-note", "exported to", "❌", timeout=180)
            assert "exported to" in note, note
            assert any((runs / "exports").iterdir())
            page.screenshot(path=str(shots / "4-export.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
