"""The desktop app, driven through its own actions in a real window (Qt offscreen).

What could go wrong and is checked here: the window's transcript differs from the library's
for the same settings (options lost on the way to the worker, segments dropped or reordered
across the thread boundary); Cancel only greys a button while decoding goes on; a saved SRT
that a subtitle parser rejects or that loses the user's correction; a bad file or model that
freezes or kills the app; settings that are not remembered.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication, QFileDialog

from tests.gui.conftest import CLIP
from whispertune import api
from whispertune.audio import SAMPLE_RATE, load_audio
from whispertune.gui.worker import GUI_BATCH_SIZE
from whispertune.transcribe import STREAM_FIRST_SPAN_SECONDS

LONGFORM = Path(__file__).resolve().parents[3] / "shared/data/longform/S0150_W0441-W0476.opus"


def _choose(window, **values) -> None:
    """Set the option widgets as a user would."""
    if "language" in values:
        window.language_box.setCurrentIndex(window.language_box.findData(values["language"]))
    if "beam" in values:
        window.beam_spin.setValue(values["beam"])
    if "vad" in values:
        window.vad_check.setChecked(values["vad"])


def _transcribe(qtbot, window, timeout_ms: int = 120_000) -> str:
    with qtbot.waitSignal(window.job_ended, timeout=timeout_ms) as ended:
        window.transcribe_action.trigger()
    return ended.args[1]


def _dialog(qtbot, window):
    qtbot.waitUntil(lambda: bool(window.open_dialogs), timeout=10_000)
    return window.open_dialogs[-1]


def _parse_srt(text: str) -> list[tuple[int, float, float, str]]:
    """A strict SubRip reader: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, text."""
    time_re = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        m = re.fullmatch(f"{time_re} --> {time_re}", lines[1])
        assert m, f"bad SRT timing line: {lines[1]!r}"
        g = [int(x) for x in m.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        cues.append((int(lines[0]), start, end, "\n".join(lines[2:])))
    return cues


@pytest.mark.slow
def test_clip_transcript_equals_the_library_and_saves_srt(qtbot, window, monkeypatch, tmp_path):
    """builtin:base on a real clip: the window's segments are the library's for the same
    settings; a corrected line is what Copy and the saved SRT contain."""
    window.set_model("builtin:base", "ct2")
    _choose(window, language="zh", beam=1, vad=True)
    monkeypatch.setattr(QFileDialog, "getOpenFileNames",
                        staticmethod(lambda *a, **k: ([str(CLIP)], "")))
    window.open_action.trigger()
    assert [j.path for j in window.jobs] == [CLIP]
    assert window.queue.item(0, 2).text() == "Queued"

    assert _transcribe(qtbot, window) == "Done"
    job = window.jobs[0]
    assert window.queue.item(0, 2).text() == "Done"
    with api.load_model("builtin:base", backend="ct2") as model:
        expected = model.transcribe(CLIP, language="zh", beam_size=1, vad=True,
                                    batch_size=GUI_BATCH_SIZE,
                                    first_span_seconds=STREAM_FIRST_SPAN_SECONDS).result()
    got = [(s.start, s.end, s.text) for s in job.segments]
    assert got == [(s.start, s.end, s.text) for s in expected.segments]
    assert got and all(text for _, _, text in got)
    table = [window.transcript.item(r, 2).text() for r in range(window.transcript.rowCount())]
    assert table == [s.text for s in expected.segments]
    assert window.language_label.text() == "language: zh"

    # correct the first line as a user does (edit the cell), then copy and save
    window.transcript.item(0, 2).setText("更正的文字")
    window.copy_action.trigger()
    assert QApplication.clipboard().text().splitlines()[0] == "更正的文字"
    target = tmp_path / "out" / "clip.srt"
    target.parent.mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *a, **k: (str(target), "")))
    window.save_actions["srt"].trigger()
    cues = _parse_srt(target.read_text(encoding="utf-8"))
    assert [c[0] for c in cues] == list(range(1, len(job.segments) + 1))
    assert cues[0][3] == "更正的文字"
    for (_, start, end, _text), seg in zip(cues, job.segments, strict=True):
        assert start == pytest.approx(seg.start, abs=0.0015)
        assert end == pytest.approx(seg.end, abs=0.0015)
    # the other formats go through the same writers
    for fmt in ("vtt", "json", "txt"):
        out = tmp_path / "out" / f"clip-{fmt}"  # no suffix: the app adds it
        monkeypatch.setattr(QFileDialog, "getSaveFileName",
                            staticmethod(lambda *a, o=out, **k: (str(o), "")))
        window.save_actions[fmt].trigger()
        assert out.with_name(f"{out.name}.{fmt}").read_text(encoding="utf-8").strip()
    assert (tmp_path / "out" / "clip-vtt.vtt").read_text(encoding="utf-8").startswith("WEBVTT")

    shot = tmp_path / "window.png"
    assert window.grab().save(str(shot))
    assert shot.stat().st_size > 10_000


def _long_audio(tmp_path: Path) -> Path:
    """The shared 3.6-minute recording when it is there, else 4 minutes of the packaged
    clips one after another: either way far more than one batch of spans."""
    if LONGFORM.is_file():
        return LONGFORM
    clips = sorted((CLIP.parent).glob("*.opus"))[:80]
    audio = np.concatenate([load_audio(c) for c in clips])
    path = tmp_path / "long.wav"
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return path


def test_cancel_stops_a_long_file_within_a_second(qtbot, window, tiny_model, tmp_path):
    """Cancel ends the file at once (status, progress bar, no more segments, the queue given
    back) and really stops the decoding: the worker returns at the end of the batch in flight
    (a decode call cannot be interrupted), and its late signals change nothing."""
    long_file = _long_audio(tmp_path)
    window.set_model(str(tiny_model), "ct2")
    _choose(window, language="en", beam=1, vad=True)
    (job,) = window.add_files([long_file])
    window.add_files([CLIP])  # queued after it: a cancel must not start it
    assert job.duration and job.duration > 180
    moves: list[float] = []  # when the bar moved, once decoding had begun
    window.worker.progress.connect(
        lambda _job, done, *_: moves.append(time.perf_counter()) if done > 0 else None)
    worker_stopped: list[float] = []
    window.worker.cancelled.connect(lambda _job: worker_stopped.append(time.perf_counter()))

    window.transcribe_action.trigger()
    # decoding has really begun: a batch was decoded and the bar moved
    qtbot.waitUntil(lambda: job.done > 0, timeout=60_000)
    assert window.cancel_action.isEnabled()
    with qtbot.waitSignal(window.job_ended, timeout=5_000) as ended:
        start = time.perf_counter()
        window.cancel_action.trigger()
    ended_after = time.perf_counter() - start
    assert ended.args == [job.id, "Cancelled"]
    assert ended_after < 1.0, f"the window took {ended_after:.2f} s to end the file"
    kept, done = list(job.segments), job.done
    assert window.transcribe_action.isEnabled() and not window.cancel_action.isEnabled()
    assert window.jobs[1].status == "Queued"

    # the worker stops at the end of its batch; nothing it sends after the click is shown
    qtbot.waitUntil(lambda: bool(worker_stopped), timeout=60_000)
    stopped = worker_stopped[0] - start
    gaps = [b - a for a, b in zip(moves, moves[1:], strict=False)]
    batch = max(gaps, default=0.0)
    assert stopped < max(1.0, batch + 0.5), (
        f"the worker stopped {stopped:.2f} s after Cancel (a batch took {batch:.2f} s)")
    qtbot.wait(300)
    assert job.status == "Cancelled" and job.segments == kept and job.done == done
    assert job.done < job.duration - 30  # stopped in the middle of the file
    assert window.jobs[1].status == "Queued"  # nothing started behind the user's back
    # the next file runs on the same engine once the user asks
    assert _transcribe(qtbot, window) == "Done"
    print(f"cancel: window {ended_after:.3f} s, worker {stopped:.2f} s after the click; "
          f"longest batch {batch:.2f} s")


def test_non_audio_file_gets_a_dialog_and_the_app_goes_on(qtbot, window, tiny_model, tmp_path,
                                                          monkeypatch):
    fake = tmp_path / "notes.mp3"
    fake.write_text("this is not audio\n" * 50)
    monkeypatch.setattr(QFileDialog, "getOpenFileNames",
                        staticmethod(lambda *a, **k: ([str(fake), str(CLIP)], "")))
    window.open_action.trigger()
    box = _dialog(qtbot, window)
    assert box.windowTitle() == "Not an audio file"
    assert "notes.mp3" in box.text()
    assert box.windowModality() == Qt.WindowModality.WindowModal
    box.button(box.StandardButton.Ok).click()
    assert not window.open_dialogs
    assert [j.path for j in window.jobs] == [CLIP]  # the good file of the same pick is queued

    window.set_model(str(tiny_model), "ct2")
    _choose(window, language="zh", beam=1)
    assert _transcribe(qtbot, window) == "Done"


def test_model_that_does_not_load_gets_a_dialog(qtbot, window, tiny_model, tmp_path,
                                                monkeypatch):
    broken = tmp_path / "my-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.bin").write_bytes(b"not a CTranslate2 model")
    (broken / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(broken)))
    window.model_picker.browse.click()
    assert window.model_picker.spec() == str(broken)
    assert window.model_picker.kind.text() == "CTranslate2 model"
    window.add_files([CLIP])
    _choose(window, language="zh", beam=1)

    assert _transcribe(qtbot, window) == "Queued"  # the file is not at fault: it stays queued
    box = _dialog(qtbot, window)
    assert box.windowTitle() == "The model could not be loaded"
    assert str(broken) in box.text()
    box.button(box.StandardButton.Ok).click()

    window.set_model(str(tiny_model), "ct2")
    assert _transcribe(qtbot, window) == "Done"
    assert not window.open_dialogs


def test_dropped_files_join_the_queue(qtbot, window, tmp_path):
    other = tmp_path / "tone.wav"
    sf.write(str(other), np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(CLIP)), QUrl.fromLocalFile(str(other))])
    event = QDropEvent(QPointF(300, 300), Qt.DropAction.CopyAction, data,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    assert [j.path for j in window.jobs] == [CLIP, other]
    assert [window.queue.item(r, 1).text() for r in range(2)] == ["0:03", "0:01"]
    assert window.transcribe_action.isEnabled()


def test_settings_are_remembered(qtbot, settings_store, tmp_path):
    from whispertune.gui.window import MainWindow

    first = MainWindow(settings_store)
    qtbot.addWidget(first)
    first.set_model(str(tmp_path), "transformers")
    _choose(first, language="de", beam=3, vad=False)
    first.task_box.setCurrentIndex(first.task_box.findData("translate"))
    first.close()

    second = MainWindow(settings_store)
    qtbot.addWidget(second)
    s = second.run_settings()
    assert (s.model, s.backend, s.language, s.task, s.beam_size, s.vad) == (
        str(tmp_path), "transformers", "de", "translate", 3, False)
    second.close()


def test_record_without_a_microphone_says_so(qtbot, window):
    from whispertune.gui.recorder import MicrophoneError, check_input_device

    try:
        check_input_device()
    except MicrophoneError:
        pass
    else:
        pytest.skip("this machine has a microphone")
    window.record_action.trigger()
    box = _dialog(qtbot, window)
    assert box.windowTitle() == "No microphone"
    assert "microphone" in box.text().lower()
    assert not window.recorder.recording
    box.button(box.StandardButton.Ok).click()
    assert window.open_action.isEnabled()


def test_gui_command_is_registered():
    from whispertune.cli import build_parser

    args = build_parser().parse_args(["gui", "--model", "runs/x/best", "a.mp3"])
    assert args.func.__module__ == "whispertune.cli.gui"
    assert args.model == "runs/x/best" and [str(f) for f in args.files] == ["a.mp3"]
