"""The Evaluate / Export / Try tab: score a model on a manifest (worst utterances listed and
playable), merge an adapter, export CTranslate2 or GGML, transcribe a clip.

All through :mod:`whispertune.api` (``load_model`` -> ``Model.evaluate``/``.transcribe``,
``api.export``, ``api.merge``) with its ProgressEvent progress and cancel: the numbers are
the CLI's, a Cancel leaves no half-written output, and a loaded model is kept for the next
call (loading, with a first conversion to CTranslate2, is most of a short evaluation).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from whispertune import api, options
from whispertune.audio import AudioError
from whispertune.errors import UserError
from whispertune.export.ct2 import ExportCT2Options
from whispertune.export.ggml import ExportGGMLOptions
from whispertune.options import ConfigError
from whispertune.progress import Cancelled, ProgressEvent
from whispertune.webui import data_tab
from whispertune.webui.context import Context, error_text

logger = logging.getLogger(__name__)

WORST_ROWS = 20
FAILURES = (UserError, ConfigError, AudioError, OSError, ValueError, RuntimeError)


def _choices(cls: type, name: str) -> list[str]:
    row = next(r for r in options.schema(cls) if r["name"] == name)
    return list(row["choices"] or [])


class ModelCache:
    """One loaded model, reused while the same model and backend are asked for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._model: api.Model | None = None

    def get(self, model: str, backend: str, progress=None, cancel=None) -> api.Model:
        with self._lock:
            key = (model, backend)
            if self._model is not None and self._key == key:
                return self._model
            if self._model is not None:
                self._model.close()
                self._model = None
            compute = "float32" if backend == "transformers" else None
            self._model = api.load_model(model, backend=backend, compute_type=compute,
                                         progress=progress, cancel=cancel)
            self._key = key
            return self._model


def _progress(bar: Any):
    """A ProgressCallback drawing Gradio's progress bar."""

    def on_event(event: ProgressEvent) -> None:
        desc = event.message or event.stage
        if event.total:
            bar((event.done, event.total), desc=desc, unit=event.unit or "steps")
        else:
            bar(0.0, desc=desc)

    return on_event


def evaluate(models: ModelCache, model: str, manifest: str, backend: str, language: str,
             beam: int, limit: int | None, progress=None, cancel=None):
    """(summary markdown, worst utterances rows)."""
    m = models.get(model, backend, progress, cancel)
    overrides: dict[str, Any] = {"beam_size": int(beam)}
    if language.strip():
        overrides["language"] = language.strip()
    if limit:
        overrides["limit"] = int(limit)
    report = m.evaluate(manifest, progress=progress, cancel=cancel, **overrides)
    worst = sorted(report.utterances, key=lambda u: (-u.error_rate, u.line))[:WORST_ROWS]
    rows = [[u.line, f"{u.error_rate * 100:.1f}", u.ref, u.hyp, u.audio] for u in worst]
    text = (f"**{report.metric.upper()} {report.error_rate * 100:.2f} %** on {report.clips} "
            f"clips ({report.audio_seconds / 60:.1f} min of audio) — "
            f"{report.clips_per_second:.2f} clips/s, RTF {report.rtf:.3f}, "
            f"model {report.model} ({report.backend})")
    return text, rows


def run_options(ctx: Context) -> list[str]:
    """Models to offer: each run's best/ (newest first), then the built-in ones."""
    found = [str(p / "best") for p in ctx.manager.runs() if (p / "best").is_dir()]
    return found + ["builtin:base", "builtin:tiny.en"]


def build(ctx: Context) -> None:
    """The tab's widgets and events (inside an open ``gr.Tab``)."""
    models = ModelCache()
    with gr.Row():
        model = gr.Dropdown(label="model (a run's best/, a directory, builtin:base, a hub id)",
                            choices=run_options(ctx), allow_custom_value=True, scale=4,
                            elem_id="tool-model")
        backend = gr.Dropdown(label="backend", choices=_choices(api.ModelOptions, "backend"),
                              value="ct2", scale=1)
    with gr.Tabs():
        with gr.Tab("Evaluate"):
            with gr.Row():
                manifest = gr.Textbox(label="manifest to score", scale=4, elem_id="eval-manifest")
                language = gr.Textbox(label="language", placeholder="auto", scale=1)
                beam = gr.Number(label="beam size", value=5, precision=0, scale=1)
                limit = gr.Number(label="clips (0: all)", value=0, precision=0, scale=1)
            with gr.Row():
                eval_btn = gr.Button("Evaluate", variant="primary", elem_id="evaluate")
                eval_cancel = gr.Button("Cancel", scale=0, min_width=100)
            eval_summary = gr.Markdown(elem_id="eval-summary")
            worst = gr.Dataframe(headers=["line", "error %", "reference", "hypothesis",
                                          "audio"], interactive=False, wrap=True,
                                 max_height=300, label="worst utterances (click to listen)")
            worst_player = gr.Audio(label="utterance", interactive=False)
        with gr.Tab("Export"):
            with gr.Row():
                fmt = gr.Radio(["ct2", "ggml"], value="ct2", label="format")
                quant = gr.Dropdown(label="ct2 quantization",
                                    choices=_choices(ExportCT2Options, "quantization"),
                                    value="int8")
                dtype = gr.Dropdown(label="ggml dtype", choices=_choices(ExportGGMLOptions,
                                                                         "dtype"), value="f16")
                gquant = gr.Dropdown(label="ggml quantize", value="none", choices=[
                    "none", *_choices(ExportGGMLOptions, "quantize")])
            export_out = gr.Textbox(label="output (empty: beside the runs, named after the "
                                    "model)", elem_id="export-output")
            with gr.Row():
                export_btn = gr.Button("Export", variant="primary", elem_id="export")
                export_cancel = gr.Button("Cancel", scale=0, min_width=100)
            export_note = gr.Markdown(elem_id="export-note")
        with gr.Tab("Merge"):
            merge_out = gr.Textbox(label="output directory for the merged transformers model")
            merge_btn = gr.Button("Merge adapter into its base model", variant="primary")
            merge_note = gr.Markdown()
        with gr.Tab("Try"):
            with gr.Row():
                clip = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                label="a clip to transcribe")
                with gr.Column():
                    try_lang = gr.Textbox(label="language", placeholder="auto")
                    try_btn = gr.Button("Transcribe", variant="primary")
            try_text = gr.Textbox(label="transcript", lines=6)

    def on_eval(m, b, path, lang, beam_size, n, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        if not m or not path:
            return "❌ choose a model and a manifest", []
        cancel = ctx.cancel_event("evaluate")
        try:
            return evaluate(models, m, path, b, lang or "", beam_size or 1, n,
                            _progress(progress), cancel)
        except Cancelled:
            return "cancelled", []
        except FAILURES as e:
            return f"❌ {error_text(e)}", []

    eval_btn.click(on_eval, [model, backend, manifest, language, beam, limit],
                   [eval_summary, worst])
    eval_cancel.click(lambda: ctx.cancel("evaluate"), [], [])

    def on_worst(table, evt: gr.SelectData):
        try:
            return data_tab.clip(table.iloc[evt.index[0]]["audio"])
        except (AudioError, OSError, IndexError, KeyError) as e:
            gr.Warning(f"cannot play: {e}")
            return None

    worst.select(on_worst, [worst], [worst_player])

    def on_export(m, f, q, dt, gq, out, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        if not m:
            return "❌ choose a model"
        if not out:
            stem = Path(m).parent.name if Path(m).name == "best" else Path(m).name
            suffix = f"-{q}" if f == "ct2" else f"-{gq if gq != 'none' else dt}.bin"
            out = str(ctx.runs_dir / "exports" / f"{stem.replace(':', '-')}-{f}{suffix}")
        kwargs: dict[str, Any] = {"quantization": q} if f == "ct2" else {
            "dtype": dt, "quantize": None if gq == "none" else gq}
        cancel = ctx.cancel_event("export")
        try:
            path = api.export(m, f, out, progress=_progress(progress), cancel=cancel, **kwargs)
        except Cancelled:
            return "cancelled: nothing was written"
        except FAILURES as e:
            return f"❌ {error_text(e)}"
        return f"✅ exported to `{path}`"

    export_btn.click(on_export, [model, fmt, quant, dtype, gquant, export_out], [export_note])
    export_cancel.click(lambda: ctx.cancel("export"), [], [])

    def on_merge(m, out, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        if not m or not out:
            return "❌ choose an adapter (a run's best/) and an output directory"
        try:
            path = api.merge(m, out, progress=_progress(progress),
                             cancel=ctx.cancel_event("merge"))
        except FAILURES as e:
            return f"❌ {error_text(e)}"
        return f"✅ merged into `{path}`"

    merge_btn.click(on_merge, [model, merge_out], [merge_note])

    def on_try(m, b, audio, lang, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
        if not m or not audio:
            return "choose a model and a clip"
        try:
            loaded = models.get(m, b, _progress(progress))
            kwargs = {"language": lang.strip()} if lang and lang.strip() else {}
            result = loaded.transcribe(audio, **kwargs).result()
        except FAILURES as e:
            return f"❌ {error_text(e)}"
        return "\n".join(f"[{s.start:6.2f} → {s.end:6.2f}] {s.text.strip()}"
                         for s in result.segments) or "(no speech)"

    try_btn.click(on_try, [model, backend, clip, try_lang], [try_text])
    ctx.on_load.append((lambda: gr.Dropdown(choices=run_options(ctx)), [], [model]))
    if ctx.manifest is not None:
        ctx.manifest.change(lambda p: p, [ctx.manifest], [manifest])
