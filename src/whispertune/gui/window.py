"""The main window: model and options, a queue of files, the live transcript, and saving.

Layout (Buzz's, which its users know): a toolbar with the actions, the model and decoding
options with the file queue on the left, the transcript (one editable row per segment, with
its times) on the right, progress and messages in the status bar. Every action is a QAction
(toolbar button, menu entry and shortcut at once), so tests drive the window as a user does.

State belongs to the UI thread: the worker (whispertune.gui.worker) only sends signals, and
each signal names its job, so a late signal from a cancelled file can never write into the
transcript of the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths, Qt, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from whispertune.audio import AudioError, audio_duration
from whispertune.backends.base import DecodeOptions
from whispertune.backends.options import BACKENDS
from whispertune.formats import format_timestamp, to_txt, write_outputs
from whispertune.gui.models import ModelPicker
from whispertune.gui.recorder import MicrophoneError, Recorder, save_take
from whispertune.gui.settings import AppSettings, load_settings, open_settings, save_settings
from whispertune.gui.worker import DecodeWorker, JobRequest, RunSettings
from whispertune.options import schema
from whispertune.transcribe import (
    LongFormOptions,
    Segment,
    TranscriptionInfo,
    TranscriptionResult,
)

logger = logging.getLogger(__name__)

SAVE_FORMATS = {"txt": "Text", "srt": "SubRip subtitles", "vtt": "WebVTT subtitles",
                "json": "JSON (segments, times, language)"}
MEDIA_FILTER = (
    "Audio and video (*.wav *.mp3 *.m4a *.flac *.ogg *.opus *.aac *.wma *.webm *.mp4 *.mkv "
    "*.mov *.avi);;All files (*)"
)


@dataclass
class Job:
    """One file of the queue and what is known of its transcription."""

    id: int
    path: Path
    duration: float | None
    status: str = "Queued"
    segments: list[Segment] = field(default_factory=list)
    info: TranscriptionInfo | None = None
    done: float = 0.0
    started_at: float | None = None
    first_segment_s: float | None = None  # seconds from start of decoding to the first one
    settings: RunSettings | None = None
    request: JobRequest | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.request is not None


def _help(cls: type, name: str) -> str:
    """The option's help text, as ``whispertune transcribe --help`` shows it."""
    for row in schema(cls):
        if row["name"] == name:
            return row["help"]
    return ""


def _language_choices() -> list[tuple[str, str]]:
    """(label, code) of every language Whisper knows, by English name."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return sorted(((f"{name.title()} ({code})", code) for code, name in LANGUAGES.items()))


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class MainWindow(QMainWindow):
    """The app. ``settings`` is the QSettings store (tests pass a file of their own)."""

    # emitted after a job's row and state are updated: (job id, "Done"/"Cancelled"/"Error")
    job_ended = Signal(int, str)
    _request = Signal(object)

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.store = settings if settings is not None else open_settings()
        self.prefs: AppSettings = load_settings(self.store)
        self.jobs: list[Job] = []
        self._next_id = 1
        self._running: Job | None = None
        self._queue_paused = True
        self._shown_job: Job | None = None
        self._dialogs: list[QMessageBox] = []
        self.recorder = Recorder()
        self._record_timer = QTimer(self)
        self._record_timer.setInterval(200)
        self._record_timer.timeout.connect(self._show_recording_time)

        self.setWindowTitle("whispertune — transcribe")
        self.resize(1180, 720)
        self.setAcceptDrops(True)
        self._build_actions()
        self._build_layout()
        self._apply_prefs()
        self._start_engine()
        self._update_actions()
        self.statusBar().showMessage(
            "Open or drop audio/video files, or record, then press Transcribe."
        )

    # -- construction ----------------------------------------------------------------------

    def _action(self, text: str, icon: QStyle.StandardPixmap, slot, shortcut=None,
                tip: str = "") -> QAction:
        action = QAction(self.style().standardIcon(icon), text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setToolTip(tip or text)
        action.triggered.connect(slot)
        return action

    def _build_actions(self) -> None:
        sp = QStyle.StandardPixmap
        self.open_action = self._action("Open files…", sp.SP_DialogOpenButton, self.open_files,
                                        QKeySequence.StandardKey.Open,
                                        "add audio or video files to the queue (Ctrl+O)")
        self.record_action = self._action("Record", sp.SP_MediaPlay, self.toggle_recording,
                                          "Ctrl+R", "record from the microphone; press again "
                                          "to stop and transcribe the take")
        self.transcribe_action = self._action("Transcribe", sp.SP_MediaSeekForward,
                                              self.start_queue, "Ctrl+Return",
                                              "transcribe the queued files (Ctrl+Enter)")
        self.cancel_action = self._action("Cancel", sp.SP_BrowserStop, self.cancel, "Esc",
                                          "stop the file being transcribed (Esc)")
        self.copy_action = self._action("Copy", sp.SP_FileDialogContentsView,
                                        self.copy_transcript, "Ctrl+Shift+C",
                                        "copy the transcript as text")
        self.save_actions: dict[str, QAction] = {}
        for fmt, label in SAVE_FORMATS.items():
            action = QAction(f"{fmt.upper()} — {label}…", self)
            action.triggered.connect(lambda _=False, f=fmt: self.save_as(f))
            self.save_actions[fmt] = action
        self.save_actions["srt"].setShortcut(QKeySequence.StandardKey.Save)
        self.remove_action = self._action("Remove", sp.SP_DialogDiscardButton,
                                          self.remove_selected, QKeySequence.StandardKey.Delete,
                                          "remove the selected file from the queue")
        self.quit_action = self._action("Quit", sp.SP_DialogCloseButton, self.close,
                                        QKeySequence.StandardKey.Quit)

        tools = self.addToolBar("Actions")
        tools.setObjectName("actions")
        tools.setMovable(False)
        tools.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (self.open_action, self.record_action):
            tools.addAction(action)
        tools.addSeparator()
        tools.addAction(self.transcribe_action)
        tools.addAction(self.cancel_action)
        tools.addSeparator()
        tools.addAction(self.copy_action)
        self.save_menu = QMenu("Save", self)
        for action in self.save_actions.values():
            self.save_menu.addAction(action)
        self.save_button = QToolButton()
        self.save_button.setText("Save as")
        self.save_button.setIcon(self.style().standardIcon(sp.SP_DialogSaveButton))
        self.save_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.save_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.save_button.setMenu(self.save_menu)
        tools.addWidget(self.save_button)

        menu = self.menuBar().addMenu("&File")
        for action in (self.open_action, self.record_action):
            menu.addAction(action)
        menu.addMenu(self.save_menu)
        menu.addSeparator()
        menu.addAction(self.quit_action)
        run_menu = self.menuBar().addMenu("&Transcription")
        for action in (self.transcribe_action, self.cancel_action, self.copy_action,
                       self.remove_action):
            run_menu.addAction(action)

    def _build_layout(self) -> None:
        # model and options
        self.model_picker = ModelPicker(self.prefs.recent_models)
        self.backend_box = QComboBox()
        self.backend_box.addItems(list(BACKENDS))
        self.backend_box.setToolTip("ct2: CTranslate2 (fast, int8); transformers: PyTorch")
        self.language_box = QComboBox()
        self.language_box.addItem("Detect automatically", "auto")
        for label, code in _language_choices():
            self.language_box.addItem(label, code)
        self.language_box.setToolTip(_help(DecodeOptions, "language"))
        self.task_box = QComboBox()
        self.task_box.addItem("Transcribe", "transcribe")
        self.task_box.addItem("Translate to English", "translate")
        self.beam_spin = QSpinBox()
        self.beam_spin.setRange(1, 20)
        self.beam_spin.setToolTip(_help(DecodeOptions, "beam_size"))
        self.vad_check = QCheckBox("Skip silence (voice activity detection)")
        self.vad_check.setToolTip(_help(LongFormOptions, "vad"))
        options = QGroupBox("Model and options")
        form = QFormLayout(options)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Model", self.model_picker)
        form.addRow("Backend", self.backend_box)
        form.addRow("Language", self.language_box)
        form.addRow("Task", self.task_box)
        form.addRow("Beam size", self.beam_spin)
        form.addRow(self.vad_check)
        for widget in (self.backend_box, self.language_box, self.task_box):
            widget.currentIndexChanged.connect(self._store_prefs)
        self.beam_spin.valueChanged.connect(self._store_prefs)
        self.vad_check.toggled.connect(self._store_prefs)
        self.model_picker.changed.connect(self._store_prefs)

        # the queue
        self.queue = QTableWidget(0, 3)
        self.queue.setHorizontalHeaderLabels(["File", "Length", "Status"])
        self.queue.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.queue.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.queue.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.queue.verticalHeader().setVisible(False)
        header = self.queue.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.queue.itemSelectionChanged.connect(self._on_queue_selection)
        self.queue.setToolTip("drop audio or video files here")
        add_button = QPushButton("Add files…")
        add_button.clicked.connect(self.open_files)
        remove_button = QPushButton("Remove")
        remove_button.clicked.connect(self.remove_selected)
        files = QGroupBox("Files")
        files_box = QVBoxLayout(files)
        files_box.addWidget(self.queue)
        buttons = QHBoxLayout()
        buttons.addWidget(add_button)
        buttons.addWidget(remove_button)
        buttons.addStretch(1)
        files_box.addLayout(buttons)

        left = QWidget()
        left_box = QVBoxLayout(left)
        left_box.setContentsMargins(0, 0, 0, 0)
        left_box.addWidget(options)
        left_box.addWidget(files, 1)

        # the transcript
        self.transcript = QTableWidget(0, 3)
        self.transcript.setHorizontalHeaderLabels(["Start", "End", "Text"])
        self.transcript.verticalHeader().setVisible(False)
        self.transcript.setWordWrap(True)
        self.transcript.setAlternatingRowColors(True)
        self.transcript.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
            | QAbstractItemView.EditTrigger.AnyKeyPressed
        )
        theader = self.transcript.horizontalHeader()
        theader.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        theader.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        theader.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.transcript.itemChanged.connect(self._on_text_edited)
        self.transcript_title = QLabel("Transcript")
        self.transcript_title.setStyleSheet("font-weight: bold;")
        self.language_label = QLabel("")
        hint = QLabel("Double-click a line to correct it; Copy and Save use the corrected text.")
        hint.setStyleSheet("color: palette(placeholder-text);")
        right = QWidget()
        right_box = QVBoxLayout(right)
        right_box.setContentsMargins(0, 0, 0, 0)
        title_row = QHBoxLayout()
        title_row.addWidget(self.transcript_title, 1)
        title_row.addWidget(self.language_label)
        right_box.addLayout(title_row)
        right_box.addWidget(self.transcript, 1)
        right_box.addWidget(hint)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([400, 780])
        central = QWidget()
        central_box = QVBoxLayout(central)
        central_box.setContentsMargins(8, 8, 8, 4)
        central_box.addWidget(splitter)
        self.setCentralWidget(central)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFixedWidth(260)
        self.progress.setFormat("")
        self.progress.setTextVisible(True)
        self.statusBar().addPermanentWidget(self.progress)

    def _apply_prefs(self) -> None:
        p = self.prefs
        widgets = (self.model_picker, self.backend_box, self.language_box, self.task_box,
                   self.beam_spin, self.vad_check)
        for w in widgets:
            w.blockSignals(True)
        self.model_picker.set_spec(p.model)
        self.backend_box.setCurrentText(p.backend)
        index = self.language_box.findData(p.language)
        self.language_box.setCurrentIndex(max(index, 0))
        self.task_box.setCurrentIndex(max(self.task_box.findData(p.task), 0))
        self.beam_spin.setValue(p.beam_size)
        self.vad_check.setChecked(p.vad)
        for w in widgets:
            w.blockSignals(False)

    def _start_engine(self) -> None:
        self.engine = QThread(self)
        self.engine.setObjectName("whispertune-decode")
        self.worker = DecodeWorker()
        self.worker.moveToThread(self.engine)
        self._request.connect(self.worker.run)
        self.worker.model_loading.connect(self._on_model_loading)
        self.worker.model_loaded.connect(self._on_model_loaded)
        self.worker.started.connect(self._on_started)
        self.worker.language.connect(self._on_language)
        self.worker.segment.connect(self._on_segment)
        self.worker.progress.connect(self._on_progress)
        self.worker.finished.connect(self._on_finished)
        self.worker.cancelled.connect(self._on_cancelled)
        self.worker.failed.connect(self._on_failed)
        self.engine.start()

    # -- settings ----------------------------------------------------------------------------

    def run_settings(self) -> RunSettings:
        """The options the next file is decoded with, as the widgets show them."""
        language = self.language_box.currentData()
        return RunSettings(
            model=self.model_picker.spec(),
            backend=self.backend_box.currentText(),
            language=None if language == "auto" else language,
            task=self.task_box.currentData(),
            beam_size=self.beam_spin.value(),
            vad=self.vad_check.isChecked(),
        )

    @Slot()
    def _store_prefs(self, *_: object) -> None:
        s = self.run_settings()
        self.prefs = replace(
            self.prefs, model=s.model, backend=s.backend, language=s.language or "auto",
            task=s.task, beam_size=s.beam_size, vad=s.vad,
        )
        save_settings(self.store, self.prefs)

    def set_model(self, spec: str, backend: str | None = None) -> None:
        """Select a model (and backend) as the picker would."""
        self.model_picker.set_spec(spec)
        if backend:
            self.backend_box.setCurrentText(backend)
        self._store_prefs()

    # -- the queue ---------------------------------------------------------------------------

    @Slot()
    def open_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Open audio or video files", self.prefs.last_dir or str(Path.home()),
            MEDIA_FILTER,
        )
        if paths:
            self.add_files([Path(p) for p in paths])

    def add_files(self, paths: list[Path]) -> list[Job]:
        """Queue files; one that is not audio gets a dialog that says why and is not queued.

        The header is read here (milliseconds) so a wrong file is caught when it is added,
        not minutes later when its turn comes."""
        added: list[Job] = []
        rejected: list[str] = []
        for path in paths:
            path = Path(path)
            try:
                duration = audio_duration(path)
            except AudioError as e:
                rejected.append(f"{path.name}: {e}")
                continue
            job = Job(self._next_id, path, duration)
            self._next_id += 1
            self.jobs.append(job)
            self._add_row(job)
            added.append(job)
        if paths:
            self.prefs.last_dir = str(Path(paths[-1]).parent)
            save_settings(self.store, self.prefs)
        if added and self.queue.currentRow() < 0:
            self.queue.selectRow(self.jobs.index(added[0]))
        if rejected:
            self.show_error(
                "Not an audio file",
                "These files cannot be transcribed (no audio stream that FFmpeg can read):\n\n"
                + "\n".join(rejected),
            )
        self._update_actions()
        return added

    def _add_row(self, job: Job) -> None:
        row = self.queue.rowCount()
        self.queue.insertRow(row)
        name = QTableWidgetItem(job.path.name)
        name.setToolTip(str(job.path))
        self.queue.setItem(row, 0, name)
        length = QTableWidgetItem(_duration_text(job.duration))
        length.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.queue.setItem(row, 1, length)
        self.queue.setItem(row, 2, QTableWidgetItem(job.status))

    def _set_status(self, job: Job, status: str) -> None:
        job.status = status
        if job in self.jobs:
            item = self.queue.item(self.jobs.index(job), 2)
            if item is not None:
                item.setText(status)
                item.setToolTip(job.error or "")

    def job(self, job_id: int) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def selected_job(self) -> Job | None:
        row = self.queue.currentRow()
        return self.jobs[row] if 0 <= row < len(self.jobs) else None

    @Slot()
    def remove_selected(self) -> None:
        job = self.selected_job()
        if job is None:
            return
        if job is self._running:
            self.cancel()
        row = self.jobs.index(job)
        self.jobs.pop(row)
        self.queue.removeRow(row)
        if self._shown_job is job:
            self._show_job(self.selected_job())
        self._update_actions()

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt's name
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt's name
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        paths = [p for p in paths if p.is_file()]
        if paths:
            event.acceptProposedAction()
            self.add_files(paths)

    # -- running -------------------------------------------------------------------------------

    @Slot()
    def start_queue(self) -> None:
        """Transcribe the queued files one after the other (again for a finished file that
        is selected: e.g. with another model or language)."""
        selected = self.selected_job()
        if (selected is not None and not selected.active
                and selected.status not in ("Queued",) and self._running is None):
            self._set_status(selected, "Queued")
        if not self.model_picker.spec():
            self.show_error("No model", "Choose a model first (e.g. builtin:base).")
            return
        self._queue_paused = False
        self._start_next()

    def _start_next(self) -> None:
        if self._running is not None or self._queue_paused:
            return
        job = next((j for j in self.jobs if j.status == "Queued"), None)
        if job is None:
            self._queue_paused = True
            self._update_actions()
            return
        settings = self.run_settings()
        if settings.model not in self.prefs.recent_models and Path(settings.model).is_dir():
            self.prefs.remember_model(settings.model)
            save_settings(self.store, self.prefs)
        job.segments, job.info, job.done, job.error = [], None, 0.0, None
        job.started_at, job.first_segment_s = None, None
        job.settings = settings
        job.request = JobRequest(job.id, job.path, settings, threading.Event())
        self._running = job
        self._set_status(job, "Waiting…")
        self.queue.selectRow(self.jobs.index(job))
        self._show_job(job)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self._update_actions()
        self._request.emit(job.request)

    @Slot()
    def cancel(self) -> None:
        """End the running file now and pause the queue; the files after it stay queued.

        The file is "Cancelled" at once, with the segments it has: a decode call in flight
        cannot be interrupted (CTranslate2's generate has no stop hook), so the worker stops at
        the end of that batch (a few seconds for builtin:base on a CPU) and its late signals
        are dropped because they name a job that is no longer running. A file started right
        after waits for that batch, on the same engine thread.
        """
        self._queue_paused = True
        job = self._running
        if job is None or job.request is None:
            return
        job.request.cancel.set()
        self._on_cancelled(job.id)  # what the worker's own confirmation would do, now

    def _current(self, job_id: int) -> Job | None:
        """The running job if the signal is about it (late signals of a cancelled or
        removed job are dropped)."""
        job = self._running
        return job if job is not None and job.id == job_id else None

    @Slot(str)
    def _on_model_loading(self, spec: str) -> None:
        if self._running is not None:
            self._set_status(self._running, "Loading model…")
        self.progress.setRange(0, 0)  # busy: a first load may convert the model
        self.statusBar().showMessage(f"Loading {spec} (a fine-tuned model is converted once, "
                                     "then cached)…")

    @Slot(str, str)
    def _on_model_loaded(self, spec: str, backend: str) -> None:
        self.progress.setRange(0, 1000)
        self.statusBar().showMessage(f"Loaded {spec} ({backend})")

    @Slot(int)
    def _on_started(self, job_id: int) -> None:
        job = self._current(job_id)
        if job is None:
            return
        job.started_at = time.perf_counter()
        self._set_status(job, "Transcribing")
        self.progress.setRange(0, 1000)
        self.statusBar().showMessage(f"Transcribing {job.path.name}…")

    @Slot(int, str)
    def _on_language(self, job_id: int, language: str) -> None:
        job = self._current(job_id)
        if job is not None and job is self._shown_job:
            self.language_label.setText(f"language: {language}")

    @Slot(int, object)
    def _on_segment(self, job_id: int, segment: Segment) -> None:
        job = self._current(job_id)
        if job is None or job.request is None or job.request.cancel.is_set():
            return
        if job.first_segment_s is None and job.started_at is not None:
            job.first_segment_s = time.perf_counter() - job.started_at
            logger.info("%s: first segment after %.2f s", job.path.name, job.first_segment_s)
        job.segments.append(segment)
        if job is self._shown_job:
            self._append_row(segment)
        self._update_actions()

    @Slot(int, float, float, float)
    def _on_progress(self, job_id: int, done: float, total: float, eta: float) -> None:
        job = self._current(job_id)
        if job is None:
            return
        job.done = done
        total = total if total > 0 else (job.duration or 0.0)
        if total > 0:
            fraction = min(1.0, done / total)
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
            left = f" · {_duration_text(eta)} left" if eta >= 0 and done > 0 else ""
            self.progress.setFormat(f"{_duration_text(done)} / {_duration_text(total)}{left}")
            self._set_status(job, f"Transcribing {fraction:.0%}")

    def _end(self, job: Job, status: str, message: str) -> None:
        job.request = None
        self._running = None
        self._set_status(job, status)
        self.progress.setRange(0, 1000)
        self.statusBar().showMessage(message)
        self._update_actions()
        self.job_ended.emit(job.id, status)
        self._start_next()

    @Slot(int, object)
    def _on_finished(self, job_id: int, info: TranscriptionInfo) -> None:
        job = self._current(job_id)
        if job is None:
            return
        job.info = info
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        first = (f", first segment after {job.first_segment_s:.1f} s"
                 if job.first_segment_s is not None else "")
        self._end(job, "Done", f"{job.path.name}: {len(job.segments)} segment(s) in "
                  f"{info.wall_seconds:.1f} s{first}")

    @Slot(int)
    def _on_cancelled(self, job_id: int) -> None:
        job = self._current(job_id)
        if job is None:
            return
        self.progress.setFormat("cancelled")
        self._end(job, "Cancelled", f"{job.path.name}: cancelled after "
                  f"{_duration_text(job.done)} ({len(job.segments)} segments kept)")

    @Slot(int, str, str)
    def _on_failed(self, job_id: int, kind: str, message: str) -> None:
        job = self._current(job_id)
        if job is None:
            return
        self.progress.setFormat("")
        self.progress.setValue(0)
        if kind == "model":
            # the file is not at fault: it stays queued for when a model loads
            self._queue_paused = True
            model = job.settings.model if job.settings else "?"
            self._end(job, "Queued", f"cannot load the model {model}")
            self.show_error(
                "The model could not be loaded",
                f"{model}\n\n{message}\n\nChoose another model (builtin:base, a transformers "
                "folder, a 'whispertune train' run's best/ folder or a CTranslate2 folder) "
                "and press Transcribe again.",
            )
            return
        job.error = message
        self._end(job, "Error", f"{job.path.name}: {message}")
        title = "Cannot read the audio" if kind == "audio" else "Transcription failed"
        self.show_error(title, f"{job.path}\n\n{message}")

    # -- the transcript ------------------------------------------------------------------------

    @Slot()
    def _on_queue_selection(self) -> None:
        self._show_job(self.selected_job())
        self._update_actions()

    def _show_job(self, job: Job | None) -> None:
        self._shown_job = job
        self.transcript.blockSignals(True)
        self.transcript.setRowCount(0)
        self.transcript.blockSignals(False)
        self.transcript_title.setText(f"Transcript — {job.path.name}" if job else "Transcript")
        language = job.info.language if job and job.info else None
        self.language_label.setText(f"language: {language}" if language else "")
        if job is not None:
            for seg in job.segments:
                self._append_row(seg)

    def _append_row(self, segment: Segment) -> None:
        table = self.transcript
        table.blockSignals(True)
        row = table.rowCount()
        table.insertRow(row)
        for col, value in enumerate((format_timestamp(segment.start, False),
                                     format_timestamp(segment.end, False))):
            item = QTableWidgetItem(value)
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            item.setForeground(self.palette().placeholderText())
            table.setItem(row, col, item)
        table.setItem(row, 2, QTableWidgetItem(segment.text))
        table.blockSignals(False)
        table.resizeRowToContents(row)
        table.scrollToBottom()

    @Slot(QTableWidgetItem)
    def _on_text_edited(self, item: QTableWidgetItem) -> None:
        job = self._shown_job
        if job is None or item.column() != 2 or not 0 <= item.row() < len(job.segments):
            return
        job.segments[item.row()].text = item.text().strip()

    def transcript_result(self, job: Job | None = None) -> TranscriptionResult | None:
        """The shown (or given) file's transcript with the user's corrections."""
        job = job or self._shown_job
        if job is None or not job.segments:
            return None
        info = job.info or TranscriptionInfo(source=str(job.path), duration=job.duration)
        return TranscriptionResult(info, list(job.segments))

    @Slot()
    def copy_transcript(self) -> None:
        result = self.transcript_result()
        if result is not None:
            QApplication.clipboard().setText(to_txt(result.segments))
            self.statusBar().showMessage("Transcript copied", 3000)

    def save_as(self, fmt: str) -> Path | None:
        """Ask where, then write the transcript with the library's writer for ``fmt``."""
        job = self._shown_job
        result = self.transcript_result(job)
        if job is None or result is None:
            return None
        folder = Path(self.prefs.last_dir) if self.prefs.last_dir else job.path.parent
        path_text, _ = QFileDialog.getSaveFileName(
            self, f"Save the transcript as {fmt.upper()}", str(folder / f"{job.path.stem}.{fmt}"),
            f"{SAVE_FORMATS[fmt]} (*.{fmt})",
        )
        if not path_text:
            return None
        path = Path(path_text)
        if path.suffix.lower() != f".{fmt}":
            path = path.with_name(f"{path.name}.{fmt}")
        try:
            (written,) = write_outputs(result, path.parent, path.stem, [fmt])
        except OSError as e:
            self.show_error("Cannot save", f"{path}\n\n{e}")
            return None
        self.prefs.last_dir = str(path.parent)
        save_settings(self.store, self.prefs)
        self.statusBar().showMessage(f"Saved {written}", 5000)
        return written

    # -- the microphone ------------------------------------------------------------------------

    @Slot()
    def toggle_recording(self) -> None:
        if self.recorder.recording:
            self._stop_recording()
            return
        try:
            self.recorder.start()
        except MicrophoneError as e:
            self.show_error("No microphone", str(e))
            return
        self.record_action.setText("Stop recording")
        self.record_action.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaStop))
        self._record_timer.start()

    def _show_recording_time(self) -> None:
        self.statusBar().showMessage(
            f"Recording from {self.recorder.device}: {_duration_text(self.recorder.seconds)} "
            "(press Stop recording to transcribe)"
        )

    def _stop_recording(self) -> None:
        self._record_timer.stop()
        audio = self.recorder.stop()
        self.record_action.setText("Record")
        self.record_action.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        if len(audio) == 0:
            self.statusBar().showMessage("Nothing was recorded")
            return
        folder = Path(QStandardPaths.writableLocation(
            QStandardPaths.StandardLocation.AppDataLocation)) / "recordings"
        path = save_take(audio, folder / f"recording-{datetime.now():%Y%m%d-%H%M%S}.wav")
        if self.add_files([path]):
            self.start_queue()

    # -- common ----------------------------------------------------------------------------------

    def show_error(self, title: str, text: str) -> QMessageBox:
        """A window-modal message that does not block the event loop (decoding goes on)."""
        box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok,
                          self)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.finished.connect(lambda _r, b=box: self._dialogs.remove(b)
                             if b in self._dialogs else None)
        self._dialogs.append(box)
        box.open()
        logger.info("%s: %s", title, text)
        return box

    @property
    def open_dialogs(self) -> list[QMessageBox]:
        """Message boxes shown and not yet closed (newest last)."""
        return list(self._dialogs)

    def _update_actions(self) -> None:
        running = self._running is not None
        queued = any(j.status == "Queued" for j in self.jobs)
        selected = self.selected_job()
        has_text = self._shown_job is not None and bool(self._shown_job.segments)
        self.transcribe_action.setEnabled(not running and (queued or selected is not None))
        self.cancel_action.setEnabled(running)
        self.copy_action.setEnabled(has_text)
        for action in self.save_actions.values():
            action.setEnabled(has_text)
        self.save_button.setEnabled(has_text)
        self.remove_action.setEnabled(selected is not None)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        """Stop decoding (at the next batch), wait for the engine, free the model."""
        if self.recorder.recording:
            self.recorder.stop()
        if self._running is not None and self._running.request is not None:
            self._running.request.cancel.set()
        self._store_prefs()
        self.engine.quit()
        self.engine.wait()
        self.worker.close_model()
        super().closeEvent(event)
