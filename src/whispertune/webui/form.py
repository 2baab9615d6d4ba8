"""The training form as data: fields, the command line, presets and scripts from one schema.

Why a module without Gradio: every widget of the Train tab, the live ``whispertune train``
preview, a saved preset and a saved script are generated from ``options.schema(TrainOptions)``
(the same dataclasses the CLI's flags come from), so none of them can drift from the CLI.
Keeping the conversions here (form values <-> flags <-> YAML) lets the tests check the round
trip through the real CLI parser without a browser.
"""

from __future__ import annotations

import datetime as _dt
import shlex
from pathlib import Path
from typing import Any

from whispertune import options
from whispertune.options import ConfigError
from whispertune.train.config import TrainOptions

# Titles of TrainOptions' groups; a group the dataclasses gain later shows with its own name.
GROUP_TITLES = {
    "": "Model",
    "data": "Data",
    "lora": "Method and adapters",
    "optim": "Schedule, batch and precision",
    "augment": "Augmentation",
    "evaluation": "Evaluation and best checkpoint",
    "run": "Run directory and process",
}
# Groups shown open: what a first run needs; the rest keep their CLI defaults, folded away.
OPEN_GROUPS = ("", "data", "lora", "optim")
# Where the data and the run are: a preset that does not name them leaves them as they are
# (a recipe is applied to the data at hand, not to the data it was saved with).
KEPT_BY_PRESETS = ("train", "eval", "output")


def train_schema() -> list[dict[str, Any]]:
    """One row per TrainOptions field (see :func:`whispertune.options.schema`)."""
    return options.schema(TrainOptions)


def groups(schema: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(group key, title, rows) in the order the dataclasses define them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in schema:
        out.setdefault(row["group"], []).append(row)
    return [(g, GROUP_TITLES.get(g, g.replace("_", " ").capitalize()), rows) for g, rows in
            out.items()]


def default_values(schema: list[dict[str, Any]]) -> dict[str, Any]:
    """The form's starting values: the CLI defaults (None where a field has none)."""
    return {row["name"]: row["default"] for row in schema}


def _is_list(row: dict[str, Any]) -> bool:
    return row["type"].startswith("list[")


def widget_value(row: dict[str, Any], value: Any) -> Any:
    """A field's value as its widget shows it: lists as space-separated text, paths as text,
    None as empty text for text widgets."""
    if _is_list(row):
        return " ".join(str(v) for v in value or [])
    if row["type"] in ("str", "path") and not row["choices"]:
        return "" if value is None else str(value)
    return value


def normalize(row: dict[str, Any], value: Any) -> Any:
    """A widget's value as the option's type (None: not given). Raises ConfigError naming the
    flag when the text is not of the type (a Number box gives floats; a list is typed)."""
    flag = row["flag"] or row["name"]
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    if value is None:
        return None
    kind = row["type"]
    try:
        if _is_list(row):
            items = value.split() if isinstance(value, str) else list(value)
            inner = kind[5:-1]
            return [float(v) if inner == "float" else int(v) if inner == "int" else str(v)
                    for v in items]
        if kind == "bool":
            return bool(value)
        if kind == "int":
            number = float(value)
            if number != int(number):
                raise ValueError(value)
            return int(number)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{flag} must be a {kind}: {value!r}") from e
    return str(value)


def changed(schema: list[dict[str, Any]], values: dict[str, Any]) -> dict[str, Any]:
    """The options the user set: normalized values that differ from the CLI default, plus the
    required ones. This is what the command, a preset and a script hold: short, and a later
    change of a default reaches presets that did not set it."""
    out: dict[str, Any] = {}
    for row in schema:
        if row["name"] not in values:
            continue
        value = normalize(row, values[row["name"]])
        default = row["default"]
        if value is None and default is not None and not row["required"]:
            continue  # an emptied box means "the default"
        if value == default and not row["required"]:
            continue
        if value is None:
            continue
        out[row["name"]] = value
    return out


def to_argv(schema: list[dict[str, Any]], values: dict[str, Any]) -> list[str]:
    """The ``whispertune train`` arguments for the form's values (flat flags, as the CLI has)."""
    set_values = changed(schema, values)
    argv: list[str] = []
    for row in schema:
        if row["name"] not in set_values:
            continue
        value = set_values[row["name"]]
        flag = row["flag"]
        if row["type"] == "bool":
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *(_fmt(v) for v in value)]
        else:
            argv += [flag, _fmt(value)]
    return argv


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def command_text(argv: list[str]) -> str:
    """``whispertune train`` with one option a line, as a person would paste it into a shell."""
    lines = ["whispertune train"]
    i = 0
    while i < len(argv):
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        lines.append(shlex.join(argv[i:j]))
        i = j
    return " \\\n  ".join(lines)


def build_options(schema: list[dict[str, Any]], values: dict[str, Any]) -> TrainOptions:
    """TrainOptions from the form, checked as the CLI checks them (ConfigError/UserError with
    the flag's name): the Start button refuses what ``whispertune train`` would refuse."""
    return options.build(TrainOptions, changed(schema, values), source=options.COMMAND_LINE)


def preset_yaml(schema: list[dict[str, Any]], values: dict[str, Any]) -> str:
    """The options the user set as YAML, keys as the long flags: the file ``--config`` reads."""
    import yaml

    data = {k.replace("_", "-"): v for k, v in changed(schema, values).items()}
    header = "# whispertune train --config this-file.yaml (flags given on the command line win)\n"
    return header + yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def load_preset(schema: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """Form values from a ``--config`` file (the CLI's reader): the file's values over the CLI
    defaults, except that fields of :data:`KEPT_BY_PRESETS` the file does not set are left
    out (the form keeps them); unknown keys are an error naming them, as in the CLI."""
    data = options.load_config_file(path)
    known = {row["name"] for row in schema}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}")
    values = {k: v for k, v in default_values(schema).items() if k not in KEPT_BY_PRESETS}
    values.update(data)
    return values


def values_from_run(schema: list[dict[str, Any]], run_json: dict[str, Any]) -> dict[str, Any]:
    """Form values from a run's ``run.json`` (its flat ``options``), to train again from it."""
    known = {row["name"] for row in schema}
    values = default_values(schema)
    values.update({k: v for k, v in run_json.get("options", {}).items() if k in known})
    values["resume"] = False
    values["force"] = False
    return values


def script_text(argv: list[str]) -> str:
    """A shell script that runs the command (stops at the first error)."""
    return "#!/usr/bin/env bash\n# written by whispertune webui\nset -euo pipefail\n\n" + \
        command_text(argv) + "\n"


def script_name(method: str, now: _dt.datetime | None = None) -> str:
    """``train_<method>_YYYYMMDD_HHMMSS.sh``: sorts by time, says what it trains."""
    now = now or _dt.datetime.now()
    return f"train_{method}_{now:%Y%m%d_%H%M%S}.sh"


def save_script(folder: Path, argv: list[str], method: str) -> Path:
    """Write the script (executable) into ``folder``; never over another file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / script_name(method)
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(script_text(argv))
    path.chmod(0o755)
    return path
