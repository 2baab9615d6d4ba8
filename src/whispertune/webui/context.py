"""What the tabs share: the runs directory, the process manager, the form's widgets.

Why one object: the Data tab's split fills the Train form's ``--train``/``--eval``, Start
in the Train tab selects the run in the Watch tab, and the Watch tab loads a past run's
options back into the form; each tab module reads the others' widgets from here instead of
importing each other.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whispertune.webui.process import RunManager


def error_text(e: BaseException) -> str:
    """The message a user reads: the library's own words (they name the flag or file:line)."""
    text = str(e).strip() or type(e).__name__
    return text.removeprefix("error: ")


@dataclass
class Context:
    runs_dir: Path
    manager: RunManager
    schema: list[dict[str, Any]]
    fields: dict[str, Any] = field(default_factory=dict)  # option name -> form widget
    manifest: Any = None  # the Data tab's current manifest box
    tabs: Any = None  # the gr.Tabs, to switch to Watch on Start
    watched: Any = None  # the Watch tab's run dropdown
    # (fn, inputs, outputs) to run when a page loads (re-attach, fresh output name, lists)
    on_load: list[tuple[Any, list[Any], list[Any]]] = field(default_factory=list)
    _cancels: dict[str, threading.Event] = field(default_factory=dict)

    def cancel_event(self, job: str) -> threading.Event:
        """A fresh cancel event for ``job`` (evaluate, export, merge, transcribe): the tab's
        Cancel button sets the one of the call in progress."""
        event = threading.Event()
        self._cancels[job] = event
        return event

    def cancel(self, job: str) -> bool:
        event = self._cancels.get(job)
        if event is None:
            return False
        event.set()
        return True
