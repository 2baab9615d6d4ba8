"""The Train tab: every TrainOptions field as a widget, grouped as the dataclasses group them,
with the CLI's default and help; the live ``whispertune train`` command; presets; scripts;
Start.

Widgets are made from ``options.schema(TrainOptions)`` (see :mod:`whispertune.webui.form`):
a field added to the dataclasses appears here with its help, and nothing is typed twice.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from whispertune.errors import UserError
from whispertune.options import ConfigError
from whispertune.webui import form
from whispertune.webui.context import Context, error_text

logger = logging.getLogger(__name__)

PER_ROW = 3
MODEL_SUGGESTIONS = ["builtin:base", "builtin:tiny.en"]
# The few fields a first run sets, shown at the top of the form in this order.
ESSENTIALS = ("model", "method", "train", "eval", "output", "language", "lora_scope",
              "freeze_encoder", "max_steps", "epochs")


HELP_CHARS = 150


def _help(row: dict[str, Any], limit: int | None = HELP_CHARS) -> str:
    """The CLI's help with its default; cut at ``limit`` characters under a widget (the
    whole text is in the form's option reference)."""
    text = row["help"]
    if limit and len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:(") + " …"
    if row["default"] not in (None, [], "") and "default" not in text:
        shown = " ".join(map(str, row["default"])) if isinstance(row["default"], list) \
            else row["default"]
        text += f" (default: {shown})"
    if row["required"]:
        text += " (required)"
    return text


def make_widget(row: dict[str, Any], value: Any = None) -> Any:
    """One unrendered widget for a schema row: dropdown for choices, checkbox for bool,
    number for int/float, text for paths, strings and lists (space-separated)."""
    value = row["default"] if value is None else value
    label = row["flag"] or row["name"]
    common = dict(label=label, info=_help(row), render=False,
                  elem_id="opt-" + row["name"].replace("_", "-"))
    if row["name"] == "model":
        return gr.Dropdown(choices=MODEL_SUGGESTIONS, value=value, allow_custom_value=True,
                           **common)
    if row["choices"]:
        return gr.Dropdown(choices=row["choices"], value=value, **common)
    if row["type"] == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if row["type"] in ("int", "float") and row["default"] is not None:
        return gr.Number(value=value, precision=0 if row["type"] == "int" else None, **common)
    # an optional number is text: empty means "the CLI's default" (a Number box shows 0)
    return gr.Textbox(value=form.widget_value(row, value), lines=1,
                      placeholder="(default)" if value is None else None, **common)


def reference_markdown(schema: list[dict[str, Any]]) -> str:
    """Every option with its full help, by group: the form's ``--help``."""
    lines = []
    for _key, title, rows in form.groups(schema):
        lines.append(f"**{title}**\n")
        lines += [f"- `{r['flag'] or r['name']}`: {_help(r, None)}" for r in rows]
        lines.append("")
    return "\n".join(lines)


def make_fields(ctx: Context) -> None:
    """Create the form's widgets (unrendered) so other tabs can wire events to them."""
    for row in ctx.schema:
        ctx.fields[row["name"]] = make_widget(row)


def _render_rows(widgets: list[Any]) -> None:
    for i in range(0, len(widgets), PER_ROW):
        with gr.Row():
            for w in widgets[i : i + PER_ROW]:
                w.render()


def new_output(ctx: Context, method: str | None) -> str:
    return str(ctx.runs_dir / f"{method or 'lora'}_{_dt.datetime.now():%Y%m%d_%H%M%S}")


def values_of(ctx: Context, args: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(ctx.fields, args, strict=True))


def preview(ctx: Context, values: dict[str, Any]) -> tuple[str, str]:
    """(command, problem): the command is shown even when the options are not valid yet, and
    the problem is the CLI's own message for them."""
    try:
        argv = form.to_argv(ctx.schema, values)
    except ConfigError as e:
        return gr.skip(), f"⚠ {error_text(e)}"
    try:
        form.build_options(ctx.schema, values)
        problem = "✅ the CLI accepts these options"
    except (ConfigError, UserError) as e:
        problem = f"⚠ {error_text(e)}"
    return form.command_text(argv), problem


def start(ctx: Context, values: dict[str, Any]) -> tuple[str, str]:
    """Check the options as the CLI does, then start ``whispertune train``; (message, output)."""
    opts = form.build_options(ctx.schema, values)
    argv = form.to_argv(ctx.schema, values)
    output = Path(opts.run.output)
    ctx.manager.start(argv, output, resume=opts.run.resume)
    return f"started: {output}", str(output)


def build(ctx: Context) -> None:
    """The tab's widgets and events (inside an open ``gr.Tab``)."""
    names = list(ctx.fields)
    widgets = list(ctx.fields.values())
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Group():
                gr.Markdown("### Essentials", padding=True)
                _render_rows([ctx.fields[n] for n in ESSENTIALS if n in ctx.fields])
            for _key, title, rows in form.groups(ctx.schema):
                rest = [ctx.fields[r["name"]] for r in rows if r["name"] not in ESSENTIALS]
                if not rest:
                    continue
                with gr.Accordion(f"{title} ({len(rest)})", open=False):
                    _render_rows(rest)
            with gr.Accordion("Option reference (every flag's full help)", open=False):
                gr.Markdown(reference_markdown(ctx.schema))
        with gr.Column(scale=2, min_width=360):
            command = gr.Code(language="shell", label="Command (updates as you edit)",
                              interactive=False, elem_id="command", max_lines=24)
            check = gr.Markdown(elem_id="command-check")
            with gr.Row():
                start_btn = gr.Button("▶ Start training", variant="primary", elem_id="start")
            start_note = gr.Markdown(elem_id="start-note")
            with gr.Accordion("Presets and scripts", open=True):
                with gr.Row():
                    preset_name = gr.Textbox(label="preset name", value="my-preset", scale=2)
                    save_preset_btn = gr.Button("Save preset", scale=1)
                with gr.Row():
                    preset_pick = gr.Dropdown(label="load a preset", choices=[], scale=2,
                                              allow_custom_value=True)
                    load_preset_btn = gr.Button("Load", scale=1)
                with gr.Row():
                    preset_upload = gr.UploadButton("Upload a --config YAML", file_types=[
                        ".yaml", ".yml", ".json"], type="filepath", elem_id="preset-upload")
                    script_btn = gr.Button("Save as script (.sh)")
                download = gr.File(label="saved file", interactive=False, visible=False)
                preset_note = gr.Markdown()

    def on_change(*args):
        return preview(ctx, values_of(ctx, args))

    for w in widgets:
        w.change(on_change, widgets, [command, check], show_progress="hidden",
                 trigger_mode="always_last")

    def on_start(*args):
        values = values_of(ctx, args)
        try:
            text, output = start(ctx, values)
        except (ConfigError, UserError, OSError) as e:
            return f"❌ {error_text(e)}", gr.skip(), gr.skip()
        runs = [str(p) for p in ctx.manager.runs()]
        return (f"✅ {text} — watch it in the **Watch** tab", gr.Tabs(selected="watch"),
                gr.Dropdown(choices=runs, value=output))

    start_btn.click(on_start, widgets, [start_note, ctx.tabs, ctx.watched])

    presets_dir = ctx.runs_dir / "presets"

    def preset_choices() -> list[str]:
        return sorted(p.stem for p in presets_dir.glob("*.yaml")) if presets_dir.is_dir() else []

    def on_save_preset(name, *args):
        name = "".join(c for c in (name or "preset") if c.isalnum() or c in "-_.") or "preset"
        try:
            text = form.preset_yaml(ctx.schema, values_of(ctx, args))
        except ConfigError as e:
            return f"❌ {error_text(e)}", gr.skip(), gr.skip()
        presets_dir.mkdir(parents=True, exist_ok=True)
        path = presets_dir / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        return (f"saved {path} — `whispertune train --config {path}` runs it",
                gr.File(value=str(path), visible=True),
                gr.Dropdown(choices=preset_choices(), value=name))

    save_preset_btn.click(on_save_preset, [preset_name, *widgets],
                          [preset_note, download, preset_pick])

    def apply(path: Path):
        try:
            values = form.load_preset(ctx.schema, path)
        except ConfigError as e:
            return [f"❌ {error_text(e)}"] + [gr.skip()] * len(names)
        updates = [form.widget_value(r, values[r["name"]]) if r["name"] in values
                   else gr.skip() for r in ctx.schema]
        return [f"loaded {path}"] + updates

    def on_load_preset(name):
        if not name:
            return ["pick a preset first"] + [gr.skip()] * len(names)
        return apply(presets_dir / f"{name}.yaml")

    load_preset_btn.click(on_load_preset, [preset_pick], [preset_note, *widgets])
    preset_upload.upload(lambda p: apply(Path(p)), [preset_upload], [preset_note, *widgets])

    def on_script(*args):
        values = values_of(ctx, args)
        try:
            argv = form.to_argv(ctx.schema, values)
        except ConfigError as e:
            return f"❌ {error_text(e)}", gr.skip()
        method = form.normalize(_row(ctx, "method"), values.get("method")) or "lora"
        path = form.save_script(ctx.runs_dir / "scripts", argv, method)
        return f"saved {path}", gr.File(value=str(path), visible=True)

    script_btn.click(on_script, widgets, [preset_note, download])

    ctx.on_load.append((lambda: gr.Dropdown(choices=preset_choices()), [], [preset_pick]))
    ctx.on_load.append((lambda m: new_output(ctx, m), [ctx.fields["method"]],
                        [ctx.fields["output"]]))


def _row(ctx: Context, name: str) -> dict[str, Any]:
    return next(r for r in ctx.schema if r["name"] == name)
