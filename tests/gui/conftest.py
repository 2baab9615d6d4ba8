"""The desktop app's tests: a real window on Qt's offscreen platform (no display needed;
under Xvfb set QT_QPA_PLATFORM=xcb to see the same window on an X server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6", reason="the gui extra (PySide6) is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from PySide6.QtCore import QSettings  # noqa: E402

from tests.backends.tiny_ct2 import make_tiny_ct2  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO / "src/whispertune/samples/aishell_s0150/clips/BAC009S0150W0445.opus"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Whisper as a CTranslate2 folder: decodes fast, for the mechanics."""
    return make_tiny_ct2(tmp_path_factory.mktemp("gui-tiny"))


@pytest.fixture
def settings_store(tmp_path) -> QSettings:
    """Settings in a file of the test's own (never the user's)."""
    return QSettings(str(tmp_path / "gui.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings_store):
    from whispertune.gui.window import MainWindow

    win = MainWindow(settings_store)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    for box in win.open_dialogs:
        box.done(0)
    win.close()
