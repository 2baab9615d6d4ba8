"""Start the desktop app: a QApplication, the main window, the command line's presets."""

from __future__ import annotations

import sys

from whispertune.gui.options import GuiOptions


def run(options: GuiOptions, argv: list[str] | None = None) -> int:
    """Open the window and run Qt's event loop until it closes."""
    from PySide6.QtWidgets import QApplication

    from whispertune.gui.settings import APPLICATION, ORGANIZATION
    from whispertune.gui.window import MainWindow

    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("whispertune")
    window = MainWindow()
    if options.model:
        window.set_model(options.model, options.backend)
    elif options.backend:
        window.set_model(window.model_picker.spec(), options.backend)
    if options.files:
        window.add_files(list(options.files))
    window.show()
    return int(app.exec())
