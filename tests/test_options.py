"""Options dataclasses drive argparse and config files; a default lives in one place."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from whispertune import options
from whispertune.options import ConfigError


@dataclass
class Inner:
    beam_size: int = field(default=5, metadata={"help": "beam"})


@dataclass
class Opts:
    manifest: Path = field(metadata={"help": "input"})
    rate: float = field(default=1e-3, metadata={"help": "lr"})
    mode: str = field(default="a", metadata={"help": "mode", "choices": ["a", "b"]})
    flag: bool = field(default=False, metadata={"help": "a switch"})
    tags: list[str] = field(default_factory=list, metadata={"help": "tags"})
    inner: Inner = field(default_factory=Inner)


def _parse(argv, config_file=True):
    p = argparse.ArgumentParser()
    options.add_options(p, Opts, config_file=config_file)
    return options.from_args(Opts, p.parse_args(argv))


def test_defaults_and_flags():
    o = _parse(["--manifest", "m.jsonl", "--flag", "--tags", "x", "y", "--beam-size", "2"])
    assert o == Opts(Path("m.jsonl"), 1e-3, "a", True, ["x", "y"], Inner(2))


def test_help_shows_defaults():
    p = argparse.ArgumentParser()
    options.add_options(p, Opts)
    text = p.format_help()
    assert "lr (default: 0.001)" in text and "beam (default: 5)" in text


def test_config_file_under_cli_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("manifest: a.jsonl\nrate: 0.5\nbeam-size: 3\nmode: b\n")
    o = _parse(["--config", str(cfg), "--rate", "0.1"])
    assert o.manifest == Path("a.jsonl") and o.rate == 0.1 and o.mode == "b"
    assert o.inner.beam_size == 3


def test_json_config(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"manifest": "x", "flag": true}')
    assert _parse(["--config", str(cfg)]).flag is True


@pytest.mark.parametrize(
    "text,message",
    [("manifest: a\nlearning_rat: 1\n", "unknown option.*learning_rat"),
     ("manifest: a\nrate: fast\n", "rate must be a float"),
     ("manifest: a\nmode: c\n", "mode must be one of a, b"),
     ("rate: 1\n", "missing required option.*manifest"),
     ("- a\n- b\n", "mapping"),
     ("manifest: [unclosed\n", "not valid YAML")],
)
def test_bad_config_files_are_clear(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        _parse(["--config", str(cfg)])
    if "mapping" in message or "YAML" in message:
        assert str(cfg) in str(err.value)


def test_build_from_dict_for_servers_and_uis():
    o = options.build(Opts, {"manifest": "m", "beam_size": "4"})
    assert o.inner.beam_size == 4 and isinstance(o.manifest, Path)
    assert options.to_dict(o)["manifest"] == "m"


def test_a_flag_named_unlike_its_field_still_sets_it():
    """--temperature fills DecodeOptions.temperatures (it was parsed into a name no option
    has, and silently dropped)."""
    from whispertune.transcribe import TranscribeOptions

    parser = argparse.ArgumentParser()
    options.add_options(parser, TranscribeOptions, config_file=True)
    ns = parser.parse_args(["a.wav", "--temperature", "0", "--no-rescore"])
    opts = options.from_args(TranscribeOptions, ns)
    assert opts.decode.temperatures == [0.0] and opts.decode.rescore is False
