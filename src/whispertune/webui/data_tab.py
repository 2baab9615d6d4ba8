"""The Data tab: a manifest from uploads, a folder or a table; validate, preview, split, stats.

Every action is a call of the library's data tools (the functions behind ``whispertune data
...``), so the UI reports the same ``file:line`` problems and writes the same manifests as
the CLI. Uploads are copied into ``<runs-dir>/data/`` first: the browser's temporary files
vanish, and a manifest must point at audio that stays.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from whispertune.audio import AudioError
from whispertune.data.convert import (
    AUDIO_EXTENSIONS,
    FolderOptions,
    TableOptions,
    manifest_from_folder,
    manifest_from_table,
)
from whispertune.data.manifest import read_manifest
from whispertune.data.split import SplitOptions, split_manifest
from whispertune.data.stats import manifest_stats
from whispertune.data.validate import ValidateOptions, validate_manifest
from whispertune.errors import UserError
from whispertune.options import ConfigError
from whispertune.webui.context import Context, error_text

logger = logging.getLogger(__name__)

PREVIEW_ROWS = 50
TABLE_SUFFIXES = (".tsv", ".csv")


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d_%H%M%S")


def make_manifest(ctx: Context, uploads: list[str] | None, path_text: str,
                  language: str) -> tuple[Path, str]:
    """A manifest from what the user gave: a path on this machine (a folder, a table or a
    manifest), else the uploaded files (audio with .txt transcripts or a transcripts.txt, a
    CSV/TSV table with its clips, or a .jsonl manifest). Returns (manifest, what was done)."""
    data_dir = ctx.runs_dir / "data"
    language = language.strip() or None
    source = Path(path_text.strip()).expanduser() if path_text.strip() else None
    if source is not None:  # typed after an upload: the newer intent wins
        if source.is_dir():
            return _from_folder(source, data_dir, language)
        if source.suffix.lower() in TABLE_SUFFIXES:
            return _from_table(source, data_dir, language)
        if source.is_file():
            return source, f"using the manifest {source}"
        raise UserError(f"{source}: no such file or folder")
    if not uploads:
        raise UserError("upload files or give a folder, table or manifest path first")
    folder = data_dir / f"upload_{_stamp()}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in uploads:
        shutil.copy2(f, folder / Path(f).name)
    files = sorted(folder.iterdir())
    manifests = [p for p in files if p.suffix == ".jsonl"]
    tables = [p for p in files if p.suffix.lower() in TABLE_SUFFIXES]
    if manifests:
        return manifests[0], f"uploaded manifest kept as {manifests[0]}"
    if tables:
        return _from_table(tables[0], data_dir, language)
    return _from_folder(folder, data_dir, language)


def _from_folder(folder: Path, data_dir: Path, language: str | None) -> tuple[Path, str]:
    out = data_dir / f"{folder.name}_{_stamp()}.jsonl"
    result = manifest_from_folder(FolderOptions(folder=folder, output=out, language=language))
    note = f"wrote {result.written} clips to {out}"
    if result.no_transcript:
        note += f"; {len(result.no_transcript)} audio files without a transcript left out"
    if result.unreadable:
        note += f"; {len(result.unreadable)} unreadable: " + "; ".join(result.unreadable[:3])
    return out, note


def _from_table(table: Path, data_dir: Path, language: str | None) -> tuple[Path, str]:
    out = data_dir / f"{table.stem}_{_stamp()}.jsonl"
    result = manifest_from_table(TableOptions(table=table, output=out, language=language))
    note = f"wrote {result.written} of {result.rows} rows to {out}"
    if result.skipped:
        note += "; left out: " + "; ".join(result.skipped[:5])
    return out, note


def validate(manifest: str) -> tuple[str, list[list[Any]]]:
    """(summary, rows of file:line / severity / problem)."""
    report = validate_manifest(Path(manifest), ValidateOptions(manifest=Path(manifest)))
    rows = [[f"{p.file}:{p.line}" if p.line else p.file, p.severity, p.message]
            for p in report.problems]
    verdict = "✅ ready to train" if report.ok else "❌ fix the errors before training"
    return f"{verdict} — {report.summary()}", rows


def preview(manifest: str) -> list[list[Any]]:
    """The first rows of a manifest (a manifest with broken lines: validate names them)."""
    samples = read_manifest(Path(manifest))
    return [[s.line, str(s.audio_path), s.duration, s.language or "", s.text]
            for s in samples[:PREVIEW_ROWS]]


def clip(audio_path: str, start: float | None = None, end: float | None = None):
    """(sample rate, samples) for the browser's player: decoded here, so any format the
    library reads plays, and no file outside Gradio's allowed paths is served."""
    from whispertune.audio import SAMPLE_RATE, load_audio

    return SAMPLE_RATE, load_audio(Path(audio_path), start=start, end=end)


def split(manifest: str, ratio: float, seed: int, by: str) -> tuple[str, str, str]:
    source = Path(manifest)
    stem = source.with_suffix("")
    opts = SplitOptions(manifest=source, train=Path(f"{stem}.train.jsonl"),
                        test=Path(f"{stem}.test.jsonl"), ratio=float(ratio), seed=int(seed),
                        by=by.strip() or None)
    result = split_manifest(opts)
    note = (f"**{result.train} clips** → `{result.train_path}`  \n**{result.test} clips** → "
            f"`{result.test_path}`  \nThe Train tab's `--train` and `--eval` now point at them.")
    return note, str(result.train_path), str(result.test_path)


def stats(manifest: str, tokens: bool):
    """(markdown summary, histogram rows)."""
    import pandas as pd

    s = manifest_stats(Path(manifest), tokens=tokens)
    lines = [
        f"**{s.clips} clips, {s.total_minutes:.1f} min** (mean {s.duration.mean:.1f} s, "
        f"min {s.duration.min:.1f} s, max {s.duration.max:.1f} s)",
        "languages: " + ", ".join(f"{k} {v}" for k, v in s.languages.items()),
        f"characters per clip: mean {s.chars_per_clip.mean:.0f}, max {s.chars_per_clip.max:.0f}",
    ]
    if s.tokens_per_clip is not None:
        lines.append(f"decoder tokens per clip: mean {s.tokens_per_clip.mean:.0f}, "
                     f"max {s.tokens_per_clip.max:.0f} (limit 448)")
    if s.no_speech or s.with_timestamps:
        lines.append(f"no-speech clips {s.no_speech}; with segment times {s.with_timestamps}")
    if s.unmeasurable:
        lines.append(f"⚠ {s.unmeasurable} clips could not be measured")
    frame = pd.DataFrame({"duration": list(s.histogram), "clips": list(s.histogram.values())})
    return "\n\n".join(lines), frame


def build(ctx: Context) -> None:
    """The tab's widgets and events (inside an open ``gr.Tab``)."""
    gr.Markdown(
        "Make a JSONL manifest from your recordings, check it, split it and look at it. "
        "Audio formats: " + ", ".join(e[1:] for e in AUDIO_EXTENSIONS) + "."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            uploads = gr.File(
                label="Upload: audio files with .txt transcripts (or a transcripts.txt), "
                "a CSV/TSV table with its clips, or a .jsonl manifest",
                file_count="multiple", type="filepath", height=140, elem_id="uploads",
            )
            with gr.Row():
                source = gr.Textbox(label="…or a path on this machine (folder, table, manifest)",
                                    scale=4, elem_id="data-source")
                language = gr.Textbox(label="language (optional)", placeholder="zh, Chinese, en",
                                      scale=1)
            make_btn = gr.Button("Make / use manifest", variant="primary", elem_id="make-manifest")
        with gr.Column(scale=2):
            manifest = gr.Textbox(label="Current manifest", elem_id="manifest",
                                  info="every action below works on this file")
            note = gr.Markdown(elem_id="data-note")
    with gr.Row():
        validate_btn = gr.Button("Validate", elem_id="validate")
        preview_btn = gr.Button("Preview rows")
        stats_btn = gr.Button("Statistics")
    with gr.Tabs():
        with gr.Tab("Problems"):
            verdict = gr.Markdown(elem_id="validate-summary")
            problems = gr.Dataframe(headers=["where", "severity", "problem"],
                                    interactive=False, wrap=True, elem_id="problems",
                                    column_widths=["28%", "10%", "62%"])
        with gr.Tab("Preview"):
            rows = gr.Dataframe(headers=["line", "audio", "duration", "language", "text"],
                                interactive=False, wrap=True, max_height=320)
            player = gr.Audio(label="click a row to listen", interactive=False)
        with gr.Tab("Split"):
            with gr.Row():
                ratio = gr.Slider(0.5, 0.99, value=0.9, step=0.01, label="--ratio (train share)")
                seed = gr.Number(value=0, precision=0, label="--seed")
                by = gr.Textbox(label="--by (keep a speaker/file on one side)",
                                placeholder="speaker, audio …")
            split_btn = gr.Button("Split", elem_id="split")
            split_note = gr.Markdown(elem_id="split-note")
        with gr.Tab("Statistics"):
            with gr.Row():
                with gr.Column(scale=2):
                    tokens = gr.Checkbox(value=False, label="count decoder tokens (loads the "
                                         "tokenizer)")
                    summary = gr.Markdown()
                with gr.Column(scale=3):
                    histogram = gr.BarPlot(x="duration", y="clips", title="clip durations",
                                           sort=None, height=260)

    def on_make(files, path_text, lang):
        try:
            path, text = make_manifest(ctx, files, path_text or "", lang or "")
        except (UserError, ConfigError, AudioError, OSError) as e:
            return gr.skip(), f"❌ {error_text(e)}"
        return str(path), text

    make_btn.click(on_make, [uploads, source, language], [manifest, note])

    def on_validate(path):
        try:
            text, table = validate(path)
        except (UserError, OSError) as e:
            return f"❌ {error_text(e)}", []
        return text, table

    validate_btn.click(on_validate, [manifest], [verdict, problems])

    def on_preview(path):
        try:
            return preview(path)
        except (UserError, OSError) as e:
            gr.Warning(error_text(e))
            return []

    preview_btn.click(on_preview, [manifest], [rows])

    def on_select(table, evt: gr.SelectData):
        try:
            audio = table.iloc[evt.index[0]]["audio"]
            return clip(audio)
        except (AudioError, OSError, IndexError, KeyError) as e:
            gr.Warning(f"cannot play: {e}")
            return None

    rows.select(on_select, [rows], [player])

    def on_split(path, r, s, field):
        try:
            text, train, test = split(path, r, s, field or "")
        except (UserError, OSError) as e:
            return f"❌ {error_text(e)}", gr.skip(), gr.skip()
        return text, train, test

    split_btn.click(on_split, [manifest, ratio, seed, by],
                    [split_note, ctx.fields["train"], ctx.fields["eval"]])

    def on_stats(path, count_tokens):
        try:
            return stats(path, count_tokens)
        except (UserError, OSError) as e:
            return f"❌ {error_text(e)}", None

    stats_btn.click(on_stats, [manifest, tokens], [summary, histogram])
    ctx.manifest = manifest
