"""TrainOptions in groups, flat outside: the same 65 flags, YAML keys and run.json keys as
when it was one flat dataclass, and options.schema for a UI's forms."""

from __future__ import annotations

import argparse
import json

import pytest

from whispertune import options
from whispertune.options import ConfigError
from whispertune.train.config import LoraOptions, TrainOptions

FLAT = {"train": "t.jsonl", "output": "runs/x", "lora_r": "4", "eval_beam_size": 2}


def test_flat_names_fill_the_groups():
    o = options.build(TrainOptions, FLAT)
    assert o.lora.lora_r == 4 and o.evaluation.eval_beam_size == 2
    assert str(o.data.train) == "t.jsonl" and str(o.run.output) == "runs/x"
    assert o.model == "builtin:base" and o.lora.method == "lora"
    names = options.option_names(TrainOptions)
    assert len(names) == 65 and {"lora_r", "noise_snr", "holdout", "threads"} <= names
    with pytest.raises(ConfigError, match="unknown option.*lora_rank.*known:.*lora_r"):
        options.build(TrainOptions, {**FLAT, "lora_rank": 4})


def test_to_dict_is_flat_and_builds_the_same_options():
    o = options.build(TrainOptions, FLAT)
    flat = options.to_dict(o)
    assert set(flat) == options.option_names(TrainOptions)
    assert flat["lora_r"] == 4 and flat["train"] == "t.jsonl" and flat["noise_snr"] == [5.0, 30.0]
    json.dumps(flat)  # run.json stores it as it is
    assert options.build(TrainOptions, flat) == o


def test_cli_flags_and_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train: t.jsonl\noutput: runs/x\nlora-r: 4\npack_seconds: 0\n")
    parser = argparse.ArgumentParser()
    options.add_options(parser, TrainOptions, config_file=True)
    # --train and --output may come from the file: argparse must not demand them
    ns = parser.parse_args(["--config", str(config), "--lora-r", "16", "--no-timestamps"])
    o = options.from_args(TrainOptions, ns)
    assert (o.lora.lora_r, o.data.pack_seconds, o.data.timestamps) == (16, 0.0, False)
    with pytest.raises(ConfigError, match="missing required option.*output"):
        options.from_args(TrainOptions, parser.parse_args(["--train", "t.jsonl"]))


def test_schema_has_one_row_per_flag():
    rows = options.schema(TrainOptions)
    assert [r["name"] for r in rows][:3] == ["model", "train", "eval"]  # --help's order
    assert {r["name"] for r in rows} == options.option_names(TrainOptions) and len(rows) == 65
    assert len({r["flag"] for r in rows}) == 65
    by_name = {r["name"]: r for r in rows}
    assert by_name["lora_r"] == {
        "name": "lora_r",
        "flag": "--lora-r",
        "group": "lora",
        "type": "int",
        "default": 8,
        "help": by_name["lora_r"]["help"],
        "choices": None,
        "required": False,
    }
    assert by_name["train"]["required"] and by_name["train"]["type"] == "path"
    assert by_name["output"]["group"] == "run" and by_name["model"]["group"] == ""
    assert by_name["method"]["choices"] == ["lora", "adalora", "full"]
    assert by_name["noise_snr"]["type"] == "list[float]"
    assert by_name["noise_snr"]["default"] == [5.0, 30.0]
    layers = by_name["encoder_layers"]
    assert (layers["type"], layers["default"]) == ("int", None)
    assert by_name["timestamps"]["type"] == "bool" and by_name["timestamps"]["default"] is True
    json.dumps(rows)
    # one group alone, as a UI's section
    assert [r["name"] for r in options.schema(LoraOptions)][:2] == ["method", "lora_scope"]


def test_help_texts_point_to_the_recipe_instead_of_quoting_figures():
    for row in options.schema(TrainOptions):
        assert " -> " not in row["help"] and "%" not in row["help"], row["name"]
