"""The Train form is generated from the options schema, and what it produces (the command,
a preset, a script) is read back by the real CLI as the same TrainOptions."""

from __future__ import annotations

import shlex
import stat

import pytest

from whispertune import options
from whispertune.cli import build_parser
from whispertune.options import ConfigError
from whispertune.train.config import TrainOptions
from whispertune.webui import form


@pytest.fixture(scope="module")
def schema():
    return form.train_schema()


def _parse(argv: list[str]) -> TrainOptions:
    ns = build_parser().parse_args(["train", *argv])
    return options.from_args(TrainOptions, ns)


def test_every_cli_flag_of_train_is_a_form_field(schema):
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    # --allow-partial-audio is every audio command's process-wide flag, not a training option
    # (the UI's training process reads it from WHISPERTUNE_ALLOW_PARTIAL_AUDIO like any other)
    cli_flags = {a.option_strings[0] for a in train._actions
                 if a.option_strings and a.dest not in ("help", "config", "allow_partial_audio")}
    assert {row["flag"] for row in schema} == cli_flags
    groups = [g for g, _title, _rows in form.groups(schema)]
    assert groups[:3] == ["", "data", "lora"] and "run" in groups


def test_widget_values_round_trip_through_the_cli_parser(schema, tmp_path):
    values = form.default_values(schema)
    values.update({
        "train": str(tmp_path / "train.jsonl"), "eval": "", "output": str(tmp_path / "run"),
        "method": "adalora", "lora_r": 16.0,            # a Number box gives floats
        "learning_rate": "3e-4", "max_steps": "40",     # optional numbers are typed text
        "timestamps": False, "spec_augment": True,
        "noise_snr": "0 20", "lora_targets": "q_proj v_proj",
        "language": "zh",
    })
    argv = form.to_argv(schema, values)
    assert "--no-timestamps" in argv and "--spec-augment" in argv and "--eval" not in argv
    parsed = _parse(argv)
    assert parsed == form.build_options(schema, values)
    assert parsed.lora.method == "adalora" and parsed.lora.lora_r == 16
    assert parsed.optim.learning_rate == 3e-4 and parsed.optim.max_steps == 40
    assert parsed.augment.noise_snr == [0.0, 20.0]
    assert parsed.lora.lora_targets == ["q_proj", "v_proj"]
    # the preview is the same command, one option a line, and a shell reads it back
    text = form.command_text(argv)
    assert text.startswith("whispertune train \\\n  --train ")  # --model is the default
    assert shlex.split(text.replace("\\\n", " "))[2:] == argv


def test_only_what_differs_from_the_defaults_is_written(schema, tmp_path):
    values = form.default_values(schema)
    values.update({"train": "t.jsonl", "output": "runs/x"})
    assert form.to_argv(schema, values) == ["--train", "t.jsonl", "--output", "runs/x"]


def test_bad_text_names_the_flag(schema):
    values = form.default_values(schema)
    values.update({"train": "t.jsonl", "output": "o", "max_steps": "ten"})
    with pytest.raises(ConfigError, match="--max-steps must be a int"):
        form.to_argv(schema, values)
    values["max_steps"] = "0"
    with pytest.raises(Exception, match="--max-steps 0"):
        form.build_options(schema, values)


def test_preset_is_the_yaml_that_cli_config_reads(schema, tmp_path):
    values = form.default_values(schema)
    values.update({"train": "t.jsonl", "output": "runs/x", "lora_r": 4, "scheduler": "cosine",
                   "volume_db": "-6 3"})
    path = tmp_path / "p.yaml"
    path.write_text(form.preset_yaml(schema, values), encoding="utf-8")
    via_cli = _parse(["--config", str(path)])
    assert via_cli == form.build_options(schema, values)
    loaded = form.load_preset(schema, path)
    assert form.changed(schema, loaded) == form.changed(schema, values)
    (tmp_path / "recipe.yaml").write_text("lora-r: 4\n", encoding="utf-8")
    recipe = form.load_preset(schema, tmp_path / "recipe.yaml")
    assert recipe["lora_r"] == 4 and recipe["scheduler"] == "linear"  # the rest: defaults
    assert not set(form.KEPT_BY_PRESETS) & set(recipe)  # the data at hand is kept
    (tmp_path / "bad.yaml").write_text("lora-rank: 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="lora_rank"):
        form.load_preset(schema, tmp_path / "bad.yaml")


def test_script_is_named_by_method_and_time_and_never_overwrites(schema, tmp_path):
    argv = ["--train", "t.jsonl", "--output", "runs/a b"]
    path = form.save_script(tmp_path, argv, "lora")
    assert path.name.startswith("train_lora_") and path.suffix == ".sh"
    assert len(path.stem.split("_", 2)[2]) == len("YYYYMMDD_HHMMSS")
    assert path.stat().st_mode & stat.S_IXUSR
    body = path.read_text()
    assert "'runs/a b'" in body and body.startswith("#!/usr/bin/env bash")
    with pytest.raises(FileExistsError):
        form.save_script(tmp_path, argv, "lora")  # same second: refused, not overwritten


def test_form_from_a_runs_run_json(schema):
    run = {"options": {"train": "t.jsonl", "output": "runs/x", "lora_r": 32, "resume": True,
                       "unknown_later_option": 1}}
    values = form.values_from_run(schema, run)
    assert values["lora_r"] == 32 and values["resume"] is False
    assert "unknown_later_option" not in values
