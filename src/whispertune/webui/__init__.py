"""The training web UI (``whispertune webui``; Gradio, in the ``webui`` extra).

Modules: :mod:`~whispertune.webui.form` (the train form, command, presets and scripts from
the options schema; no Gradio), :mod:`~whispertune.webui.process` (start/stop/re-attach
``whispertune train`` processes), :mod:`~whispertune.webui.metrics` (a run directory read for
display), one module per tab, and :mod:`~whispertune.webui.app` (the Blocks and launch).
"""
