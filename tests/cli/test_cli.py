"""The ``whispertune`` command as a user meets it: ``--help`` of every command without
importing torch, one error format that names the flag, results on stdout and warnings on
stderr once, no third-party deprecation notices."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from whispertune.cli import main

HEAVY = ("torch", "transformers", "ctranslate2", "peft", "faster_whisper", "accelerate")

_HELP_EVERY_COMMAND = """
import argparse, contextlib, io, json, sys
from whispertune.cli import build_parser

def walk(parser, path):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, [*path, name])

commands = list(walk(build_parser(), []))
for path in commands:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            build_parser().parse_args([*path, "--help"])
        except SystemExit:
            pass
    assert "usage: whispertune" in out.getvalue(), path
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"commands": [" ".join(p) for p in commands], "heavy": heavy}))
"""


def test_help_of_every_command_imports_no_heavy_library():
    code = f"HEAVY = {HEAVY!r}\n{_HELP_EVERY_COMMAND}"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for command in ("", "demo", "evaluate", "transcribe", "train", "merge", "export ct2",
                    "export ggml", "models resolve", "models to-transformers", "data from-tsv"):
        assert command in result["commands"]
    assert result["heavy"] == []


def test_missing_options_are_named_by_their_flag(capsys):
    assert main(["export", "ct2"]) == 2
    assert capsys.readouterr().err == "error: missing required option(s): --output\n"
    assert main(["merge", "--output", "x"]) == 2
    assert capsys.readouterr().err == "error: missing required option(s): --adapter\n"
    assert main(["evaluate"]) == 2
    assert capsys.readouterr().err == "error: missing required option(s): --manifest\n"


def test_config_file_errors_name_the_key(tmp_path, capsys):
    config = tmp_path / "export.yaml"
    config.write_text("quantization: int8\n")
    assert main(["export", "ct2", "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"error: {config}: missing required option(s): output\n"
    config.write_text("output: out\nquantization: int3\n")
    assert main(["export", "ct2", "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {config}: quantization must be one of")


def test_argparse_errors_begin_like_every_other_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "ggml", "--quantize", "q3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --quantize: invalid choice: 'q3'")
    assert "'whispertune export ggml --help'" in err


_LOG = """
import logging, sys
from whispertune.cli import _setup_logging
_setup_logging(int(sys.argv[1]), False)
log = logging.getLogger("whispertune.merge")
log.info("merged a into b")
log.warning("careful")
"""


def test_info_logs_only_with_verbose_and_warnings_read_like_errors():
    def stderr(verbose: int) -> str:
        return subprocess.run(
            [sys.executable, "-c", _LOG, str(verbose)], capture_output=True, text=True,
            timeout=60, check=True,
        ).stderr

    assert stderr(0) == "warning: careful\n"
    assert stderr(1) == (
        "INFO whispertune.merge: merged a into b\nWARNING whispertune.merge: careful\n"
    )


def test_third_party_deprecation_warnings_do_not_reach_the_user(capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        assert main(["models", "list"]) == 0
        warnings.warn("old API", FutureWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
        warnings.warn("pkg_resources is deprecated as an API.", UserWarning, stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real problem"]
    assert "builtin:base" in capsys.readouterr().out


def test_models_resolve_and_to_transformers(tmp_path, capsys):
    assert main(["models", "resolve", "builtin:tiny.en"]) == 0
    assert capsys.readouterr().out.startswith("kind: builtin\npath: ")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["models", "to-transformers", "builtin:tiny.en", "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out}: already exists")
    assert main(["models", "to-transformers", "builtin:tiny.en", "--output", str(out),
                 "--force"]) == 0
    assert capsys.readouterr().out == f"transformers checkpoint: {out}\n"
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]
