"""Export any model source to a GGML file that whisper.cpp loads and transcribes with.

Why write the format here instead of running whisper.cpp's ``convert-h5-to-ggml.py``: that script
needs ``vocab.json``/``added_tokens.json`` (transformers 5 writes only ``tokenizer.json``), a clone
of openai-whisper for ``mel_filters.npz``, and ``max_length`` in the config; and its f32 mode
rounds every weight through float16 first. The layout below follows that script (whisper.cpp
1.8.5's loader, ``whisper_model_load``, is what checks it):

- header: magic ``ggml``, 11 int32 hyper-parameters (vocab, audio ctx/state/heads/layers, text
  ctx/state/heads/layers, mel bins, ftype); ftype is 0 (f32), 1 (f16) or, for quantized files,
  ``GGML_QNT_VERSION * 1000 + ggml_ftype`` as whisper.cpp's ``quantize`` tool writes it;
- mel filters, n_mel x (n_fft/2 + 1) float32: Slaney-style mel filters, computed as Whisper does
  (transformers' ``WhisperFeatureExtractor``; they match the filters inside whisper.cpp's own
  ``for-tests-ggml-base.bin`` to 2e-9);
- vocabulary: the byte-level BPE tokens (ids 0..n-1, added/special tokens left out: whisper.cpp
  numbers those itself), each as its raw bytes (GPT-2's byte-to-unicode mapping undone);
- tensors: int32 n_dims, name length, ggml type, dims innermost first, name, data. 1-D tensors,
  conv biases (as [n, 1]) and positional embeddings are f32; the other weights f16 (or f32 with
  ``dtype="f32"``), or quantized. ``proj_out`` is not written: whisper.cpp projects with the token
  embedding, so an untied output projection is refused rather than silently dropped.

Quantization is whisper.cpp's: the 2-D weight matrices except the positional embeddings and conv
biases (its ``examples/quantize`` skip list), token embedding included, taken from their f16
values (what ``quantize model-f16.bin out.bin q8_0`` reads) and packed by ggml's own
``ggml_quantize_chunk`` from the ``libggml-base`` pywhispercpp bundles, called through ctypes. When
that library cannot be found, a numpy transcription of ggml's reference quantizers (the same
bytes; the tests check it) is used. Conv weights stay f16, which the loader requires.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whispertune.errors import UserError
from whispertune.models.sources import ModelSource, SourceOptions, resolve
from whispertune.progress import ProgressCallback, Reporter, check_cancel
from whispertune.staging import clean_leftovers, temp_prefix

logger = logging.getLogger(__name__)

GGML_MAGIC = 0x67676D6C  # "ggml"
GGML_QNT_VERSION = 2  # ggml.h: bump on quantization format changes
GGML_QNT_VERSION_FACTOR = 1000

DTYPES = ("f16", "f32")
QUANTIZATIONS = ("q8_0", "q5_0", "q4_0")

# ggml.h: enum ggml_type and enum ggml_ftype.
_TYPE_F32, _TYPE_F16 = 0, 1


@dataclass(kw_only=True)
class ExportGGMLOptions(SourceOptions):
    """Options of ``whispertune export ggml`` (``--model`` from SourceOptions). What each
    storage costs and how close its output stays is measured in docs/export.md."""

    output: Path = field(
        metadata={"help": "GGML file to write, for example ggml-model.bin"}
    )
    dtype: str = field(
        default="f16",
        metadata={
            "help": "storage of the weight matrices; f16 is what whisper.cpp runs (f32: see "
            "docs/export.md)",
            "choices": list(DTYPES),
        },
    )
    quantize: str | None = field(
        default=None,
        metadata={
            "help": "quantize the 2-D weight matrices as whisper.cpp's quantize tool does; "
            "needs --dtype f16; default: not quantized",
            "choices": list(QUANTIZATIONS),
        },
    )
    force: bool = field(default=False, metadata={"help": "replace an existing output file"})
    verify: bool = field(
        default=True,
        metadata={
            "help": "load the written file in whisper.cpp before putting it in place "
            "(--no-verify skips it)"
        },
    )


@dataclass(frozen=True)
class _QuantType:
    ggml_type: int  # enum ggml_type
    ggml_ftype: int  # enum ggml_ftype (GGML_FTYPE_MOSTLY_*)
    block_bytes: int  # bytes per block of 32 weights


QUANT_TYPES: dict[str, _QuantType] = {
    "q4_0": _QuantType(ggml_type=2, ggml_ftype=2, block_bytes=2 + 16),
    "q5_0": _QuantType(ggml_type=6, ggml_ftype=8, block_bytes=2 + 4 + 16),
    "q8_0": _QuantType(ggml_type=8, ggml_ftype=7, block_bytes=2 + 32),
}
QK = 32  # weights per block for q4_0, q5_0, q8_0

# whisper.cpp's examples/quantize: never quantized (besides every tensor that is not 2-D).
_NOT_QUANTIZED = {
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
}
# Kept f32 in an f16 file (convert-h5-to-ggml.py), and the loader expects them so.
_ALWAYS_F32 = _NOT_QUANTIZED

_LAYER_PARTS = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_TOP_LEVEL = {
    "encoder.conv1.weight": "encoder.conv1.weight",
    "encoder.conv1.bias": "encoder.conv1.bias",
    "encoder.conv2.weight": "encoder.conv2.weight",
    "encoder.conv2.bias": "encoder.conv2.bias",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "encoder.layer_norm.weight": "encoder.ln_post.weight",
    "encoder.layer_norm.bias": "encoder.ln_post.bias",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.layer_norm.weight": "decoder.ln.weight",
    "decoder.layer_norm.bias": "decoder.ln.bias",
}


def ggml_tensor_name(hf_name: str) -> str | None:
    """whisper.cpp's name for a ``WhisperForConditionalGeneration`` parameter (None: not stored)."""
    if hf_name == "proj_out.weight":
        return None
    name = hf_name.removeprefix("model.")
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    parts = name.split(".")
    # encoder.layers.3.self_attn.q_proj.weight -> encoder.blocks.3.attn.query.weight
    if len(parts) >= 5 and parts[0] in ("encoder", "decoder") and parts[1] == "layers":
        inner = ".".join(parts[3:-1])
        if inner in _LAYER_PARTS:
            return f"{parts[0]}.blocks.{parts[2]}.{_LAYER_PARTS[inner]}.{parts[-1]}"
    raise UserError(f"parameter {hf_name!r} has no place in whisper.cpp's Whisper model")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte <-> unicode table, inverted (BPE token text -> raw bytes)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def vocabulary_bytes(tokenizer) -> list[bytes]:
    """The BPE vocabulary as raw bytes, index = token id, added/special tokens left out.

    From the tokenizer object, so it works whether the checkpoint has ``vocab.json`` or only
    ``tokenizer.json`` (transformers 5). whisper.cpp names the special tokens after the last
    entry itself (``[_SOT_]``, ``[_TT_150]``, ...) from their positions.
    """
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    vocab = {i: t for t, i in tokenizer.get_vocab().items() if i not in added}
    n = len(vocab)
    if set(vocab) != set(range(n)):
        raise UserError(
            "the tokenizer's BPE vocabulary does not number its tokens 0..n-1; whisper.cpp "
            "cannot use it"
        )
    decoder = _byte_decoder()
    out = []
    for i in range(n):
        text = vocab[i]
        try:
            out.append(bytes(decoder[c] for c in text))
        except KeyError:  # not byte-level text (should not happen for Whisper): keep as UTF-8
            out.append(text.encode("utf-8"))
    return out


def mel_filters(n_mels: int) -> np.ndarray:
    """Whisper's mel filter bank, n_mels x 201 float32 (sr 16 kHz, n_fft 400, Slaney)."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels)
    return np.ascontiguousarray(np.asarray(fe.mel_filters, dtype=np.float32).T)


def check_whisper_cpp_compatible(config, quantize: str | None) -> None:
    """Refuse what whisper.cpp's loader would reject or compute differently, with the reason.

    whisper.cpp hard-codes parts of the architecture that transformers makes configurable.
    """
    if getattr(config, "model_type", None) != "whisper":
        raise UserError(
            f"a {getattr(config, 'model_type', 'unknown')!r} checkpoint, not Whisper; "
            "whisper.cpp runs Whisper models only"
        )
    d = config.d_model
    problems = []
    for side in ("encoder", "decoder"):
        ffn = getattr(config, f"{side}_ffn_dim")
        if ffn != 4 * d:
            problems.append(f"{side}_ffn_dim {ffn} (whisper.cpp needs 4 x d_model = {4 * d})")
    act = getattr(config, "activation_function", "gelu")
    if act != "gelu":
        problems.append(f"activation {act!r} (whisper.cpp uses gelu)")
    if getattr(config, "scale_embedding", False):
        problems.append("scale_embedding (whisper.cpp does not scale embeddings)")
    if config.num_mel_bins not in (80, 128):
        problems.append(f"{config.num_mel_bins} mel bins (whisper.cpp supports 80 and 128)")
    if quantize and d % QK:
        problems.append(f"d_model {d} is not a multiple of {QK} (needed to quantize rows)")
    if problems:
        raise UserError("cannot export to whisper.cpp: " + "; ".join(problems))


# --------------------------------------------------------------------------- quantization


@functools.lru_cache(maxsize=1)
def _ggml_library() -> ctypes.CDLL | None:
    """ggml's base library as bundled by pywhispercpp (whisper.cpp's own quantizer), or None."""
    spec = importlib.util.find_spec("pywhispercpp")
    candidates: list[Path] = []
    if spec is not None and spec.origin:
        pkg = Path(spec.origin).parent
        site = pkg.parent
        for pattern in ("libggml-base*.so*", "libggml-base*.dylib", "ggml-base*.dll"):
            for folder in (site / "pywhispercpp.libs", pkg / ".dylibs", pkg, site):
                candidates.extend(sorted(folder.glob(pattern)))
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
            fn = lib.ggml_quantize_chunk
        except (OSError, AttributeError):
            continue
        fn.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        fn.restype = ctypes.c_size_t
        logger.debug("ggml quantizer: %s", path)
        return lib
    logger.info("ggml library not found next to pywhispercpp; quantizing with numpy")
    return None


def quantize_ggml(matrix: np.ndarray, kind: str) -> bytes:
    """Quantize a 2-D float32 matrix row by row with ggml's ``ggml_quantize_chunk``."""
    q = QUANT_TYPES[kind]
    lib = _ggml_library()
    if lib is None:
        return quantize_reference(matrix, kind)
    x = np.ascontiguousarray(matrix, dtype=np.float32)
    rows, per_row = x.shape
    if per_row % QK:
        raise UserError(f"rows of {per_row} values cannot be quantized in blocks of {QK}")
    expected = rows * (per_row // QK) * q.block_bytes
    out = np.empty(expected, dtype=np.uint8)
    written = lib.ggml_quantize_chunk(
        q.ggml_type, x.ctypes.data, out.ctypes.data, 0, rows, per_row, None
    )
    if written != expected:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {expected}")
    return out.tobytes()


def quantize_reference(matrix: np.ndarray, kind: str) -> bytes:
    """ggml's reference quantizers (ggml-quants.c ``quantize_row_*_ref``) in numpy.

    Same float32 arithmetic in the same order, so the bytes equal ``ggml_quantize_chunk``'s; used
    when the library is not available, and by the tests to check the ctypes call.
    """
    x = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1, QK)
    n = x.shape[0]
    if kind == "q8_0":
        amax = np.abs(x).max(axis=1)
        d = (amax / np.float32(127)).astype(np.float32)
        inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
        v = (x * inv[:, None]).astype(np.float32)
        qs = (np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)).astype(np.int8)  # roundf
        out = np.empty(n, dtype=[("d", "<f2"), ("qs", "i1", (QK,))])
        out["d"], out["qs"] = d.astype(np.float16), qs
        return out.tobytes()
    if kind not in ("q4_0", "q5_0"):
        raise UserError(f"unknown quantization {kind!r}; use one of {', '.join(QUANTIZATIONS)}")
    levels = 8 if kind == "q4_0" else 16
    signed_max = x[np.arange(n), np.abs(x).argmax(axis=1)]  # first largest magnitude, with sign
    d = (signed_max / np.float32(-levels)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    v = ((x * inv[:, None]).astype(np.float32) + np.float32(levels + 0.5)).astype(np.float32)
    xi = np.minimum(2 * levels - 1, np.trunc(v).astype(np.int8)).astype(np.uint8)
    lo, hi = xi[:, : QK // 2], xi[:, QK // 2 :]
    qs = (lo & 0x0F) | ((hi & 0x0F) << 4)
    if kind == "q4_0":
        out = np.empty(n, dtype=[("d", "<f2"), ("qs", "u1", (QK // 2,))])
        out["d"], out["qs"] = d.astype(np.float16), qs
        return out.tobytes()
    bits = np.arange(QK // 2, dtype=np.uint32)
    qh = ((((lo >> 4) & 1).astype(np.uint32) << bits).sum(axis=1)) | (
        (((hi >> 4) & 1).astype(np.uint32) << (bits + QK // 2)).sum(axis=1)
    )
    out = np.empty(n, dtype=[("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (QK // 2,))])
    out["d"], out["qh"], out["qs"] = d.astype(np.float16), qh.astype(np.uint32), qs
    return out.tobytes()


# --------------------------------------------------------------------------- writing


def _tensor_records(
    state: dict, dtype: str, quantize: str | None
) -> Iterator[tuple[str, tuple[int, ...], int, bytes]]:
    """(name, numpy shape, ggml type, bytes) for each stored tensor, in state-dict order."""
    for hf_name, tensor in state.items():
        name = ggml_tensor_name(hf_name)
        if name is None:
            continue
        data = tensor.detach().to("cpu").float().numpy()
        if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
            data = data.reshape(-1, 1)  # whisper.cpp adds it to a [frames, n] result
        if data.ndim < 2 or name in _ALWAYS_F32 or dtype == "f32" and not quantize:
            yield name, data.shape, _TYPE_F32, np.ascontiguousarray(data, np.float32).tobytes()
            continue
        half = np.ascontiguousarray(data, np.float16)
        if quantize and data.ndim == 2 and name not in _NOT_QUANTIZED:
            q = QUANT_TYPES[quantize]
            yield name, data.shape, q.ggml_type, quantize_ggml(half.astype(np.float32), quantize)
        else:
            yield name, data.shape, _TYPE_F16, half.tobytes()


def _file_ftype(dtype: str, quantize: str | None) -> int:
    if quantize:
        return GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + QUANT_TYPES[quantize].ggml_ftype
    return 0 if dtype == "f32" else 1


def write_ggml(
    model,
    tokenizer,
    path: Path,
    *,
    dtype: str = "f16",
    quantize: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Write a loaded ``WhisperForConditionalGeneration`` and its tokenizer as GGML to ``path``.

    Events: stage "write", one per tensor (unit "tensor"). ``cancel`` is checked after each
    tensor (:class:`whispertune.progress.Cancelled`); the caller removes the partial file.
    """
    config = model.config
    check_whisper_cpp_compatible(config, quantize)
    state = model.state_dict()
    embed = state["model.decoder.embed_tokens.weight"]
    proj = state.get("proj_out.weight")
    if proj is not None and proj.data_ptr() != embed.data_ptr() and not bool((proj == embed).all()):
        raise UserError(
            "the model's output projection (proj_out) is not tied to its token embedding; "
            "whisper.cpp computes logits with the token embedding, so this model cannot be "
            "exported without changing its output"
        )
    vocab = vocabulary_bytes(tokenizer)
    filters = mel_filters(config.num_mel_bins)
    hparams = (
        config.vocab_size,
        config.max_source_positions,
        config.d_model,
        config.encoder_attention_heads,
        config.encoder_layers,
        config.max_target_positions,  # whisper.cpp's n_text_ctx (not generation max_length)
        config.d_model,
        config.decoder_attention_heads,
        config.decoder_layers,
        config.num_mel_bins,
        _file_ftype(dtype, quantize),
    )
    stored = [k for k in state if ggml_tensor_name(k) is not None]
    report = Reporter(progress, "write", total=len(stored), unit="tensor")
    report(0)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<I", GGML_MAGIC))
        fh.write(struct.pack("<11i", *hparams))
        fh.write(struct.pack("<2i", *filters.shape))
        fh.write(filters.astype("<f4").tobytes())
        fh.write(struct.pack("<i", len(vocab)))
        for token in vocab:
            fh.write(struct.pack("<i", len(token)))
            fh.write(token)
        for done, (name, shape, ggml_type, payload) in enumerate(
            _tensor_records(state, dtype, quantize), start=1
        ):
            raw = name.encode("utf-8")
            fh.write(struct.pack("<3i", len(shape), len(raw), ggml_type))
            fh.write(struct.pack(f"<{len(shape)}i", *reversed(shape)))
            fh.write(raw)
            fh.write(payload)
            report(done)
            check_cancel(cancel, "export")


def _hf_config(source: ModelSource) -> dict:
    path = source.hf_dir() / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{source.describe()}: cannot read {path}: {e}") from e


def export_ggml(
    model: str | ModelSource,
    output: str | Path,
    *,
    dtype: str = "f16",
    quantize: str | None = None,
    force: bool = False,
    verify: bool = True,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Write ``output``, a GGML model file for whisper.cpp, from any model source.

    An adapter is merged into its base first. The file is written next to ``output`` under a
    temporary name and, with ``verify``, loaded by whisper.cpp (pywhispercpp) before it is moved
    into place, so a file at ``output`` is always one whisper.cpp accepts. Refuses to replace an
    existing file without ``force``.

    Events: "load" (the model, an adapter merged: 0 then 1), "write" (one per tensor, unit
    "tensor"), "verify" (with ``verify``: 0 then 1). ``cancel`` is checked between stages
    and after each tensor; a cancelled export raises :class:`whispertune.progress.Cancelled`
    (``state="removed"``): the temporary file is deleted and ``output`` left as it was.
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {quantize!r}; use one of {', '.join(QUANTIZATIONS)}")
    if quantize and dtype == "f32":
        raise UserError(
            "--quantize needs --dtype f16: whisper.cpp keeps the conv weights of a quantized "
            "model in f16"
        )
    output = Path(output)
    if output.is_dir():
        raise UserError(f"{output}: is a directory; --output takes a file name such as model.bin")
    if output.exists() and not force:
        raise UserError(f"{output}: already exists; pass --force to replace it")
    source = model if isinstance(model, ModelSource) else resolve(model)
    config = _hf_config(source)
    if config.get("model_type") != "whisper":
        raise UserError(
            f"{source.describe()}: a {config.get('model_type', 'unknown')!r} checkpoint, not "
            "Whisper; whisper.cpp runs Whisper models only"
        )

    from transformers import WhisperConfig

    from whispertune.models.loading import load_transformers

    check_whisper_cpp_compatible(WhisperConfig.from_dict(config), quantize)  # before loading
    if dtype == "f32":
        logger.warning(
            "f32 GGML files load in whisper.cpp but its CPU backend (1.8.5, as bundled by "
            "pywhispercpp) aborts when encoding them: its conv1d needs f16 kernels "
            "(ggml-org/whisper.cpp#2557). Use f16 unless your whisper.cpp build runs f32."
        )
    check_cancel(cancel, "export")
    load = Reporter(progress, "load", total=1, unit="model")
    load(0, message=f"loading {source.describe()}")
    loaded = load_transformers(source, dtype="float32", merge_adapter=True)
    load(1)
    check_cancel(cancel, "export")
    output.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(output.parent, output.name)  # what killed exports to output left
    fd, tmp_name = tempfile.mkstemp(
        dir=output.parent, prefix=temp_prefix(output, "ggml"), suffix=".tmp"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a model file is for sharing
    try:
        label = quantize or dtype
        logger.info("writing GGML (%s) -> %s", label, output)
        write_ggml(
            loaded.model,
            loaded.tokenizer,
            tmp,
            dtype=dtype,
            quantize=quantize,
            progress=progress,
            cancel=cancel,
        )
        del loaded
        if verify:
            check = Reporter(progress, "verify", total=1, unit="file")
            check(0)
            try:
                info = whisper_cpp_model_info(tmp)
            except UserError as e:
                raise UserError(
                    f"{output}: not written, whisper.cpp rejects the exported file: {e}"
                ) from e
            logger.info(
                "whisper.cpp loads it: %s, %d layers, vocab %d, ftype %d",
                info["type"],
                info["n_audio_layer"],
                info["n_vocab"],
                info["ftype"],
            )
            check(1)
        check_cancel(cancel, "export")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("GGML model: %s (%.1f MB)", output, output.stat().st_size / 1e6)
    return output


# --------------------------------------------------------------------------- whisper.cpp


_MODEL_INFO_SCRIPT = """
import json, sys
import _pywhispercpp as pw
ctx = pw.whisper_init_from_file_with_params(sys.argv[1], pw.whisper_context_default_params())
info = {
    "n_vocab": pw.whisper_model_n_vocab(ctx),
    "n_audio_ctx": pw.whisper_model_n_audio_ctx(ctx),
    "n_audio_state": pw.whisper_model_n_audio_state(ctx),
    "n_audio_layer": pw.whisper_model_n_audio_layer(ctx),
    "n_text_ctx": pw.whisper_model_n_text_ctx(ctx),
    "n_text_layer": pw.whisper_model_n_text_layer(ctx),
    "n_mels": pw.whisper_model_n_mels(ctx),
    "ftype": pw.whisper_model_ftype(ctx),
    "type": pw.whisper_model_type_readable(ctx),
    "multilingual": bool(pw.whisper_is_multilingual(ctx)),
}
pw.whisper_free(ctx)
print(json.dumps(info))
"""


def whisper_cpp_model_info(path: str | Path, timeout: float = 600.0) -> dict:
    """Load ``path`` with whisper.cpp (pywhispercpp) and return its hyper-parameters.

    This is the check that matters: whisper.cpp's loader verifies every tensor's name, shape
    and byte size. It runs in a child process because pywhispercpp cannot report a failed load
    (its wrapper hides the NULL context and the next call crashes the interpreter); a crash
    there becomes a UserError here, with whisper.cpp's own reason.
    """
    if importlib.util.find_spec("_pywhispercpp") is None:
        raise UserError(
            "pywhispercpp is not installed, so whisper.cpp cannot check the file: "
            "pip install 'pywhispercpp>=1.5.1,<1.6', or pass --no-verify"
        )
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # ggml_abort would wait on gdb
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _MODEL_INFO_SCRIPT, str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise UserError(f"{path}: whisper.cpp did not finish loading it in {timeout:.0f} s") from e
    if proc.returncode == 0 and proc.stdout.strip():
        return json.loads(proc.stdout.strip().splitlines()[-1])
    # whisper.cpp logs the reason just before "failed to load model"
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    reason = "; ".join(lines[-3:]) or f"exit status {proc.returncode}"
    raise UserError(f"{path}: whisper.cpp cannot load this file ({reason})")


@dataclass
class CppTranscript:
    text: str
    tokens: list[int] = field(default_factory=list)


class WhisperCpp:
    """A GGML file in whisper.cpp (one that loads: see whisper_cpp_model_info), decoding the
    way our transformers backend does at beam 1 with its guards off.

    Greedy at temperature 0 with no fallback, no timestamps, one segment per clip of up to 30 s,
    non-speech tokens suppressed (transformers applies the generation config's suppress list),
    and no no-speech skipping, so the two runtimes can be compared token for token.
    """

    def __init__(self, path: str | Path, *, threads: int = 0, max_tokens: int = 0) -> None:
        """``max_tokens`` caps the tokens decoded per clip (0: whisper.cpp's n_text_ctx / 2)."""
        from pywhispercpp.model import Model

        self.path = Path(path)
        self.model = Model(
            str(self.path),
            redirect_whispercpp_logs_to=None,
            n_threads=threads or min(4, os.cpu_count() or 1),
            print_progress=False,
            print_realtime=False,
            print_timestamps=False,
            no_context=True,
            single_segment=True,
            no_timestamps=True,
            temperature=0.0,
            temperature_inc=0.0,
            suppress_blank=True,
            suppress_nst=True,
            no_speech_thold=1.0,
            greedy={"best_of": 1},
            max_tokens=max_tokens,
        )

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> CppTranscript:
        """Decode one clip (16 kHz mono float32); ``language`` is a code, None detects it."""
        import _pywhispercpp as pw
        from pywhispercpp import utils

        with utils.redirect_stderr(to=None):
            self.model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32),
                language=language or "auto",
                detect_language=False,
            )
        ctx = self.model._ctx
        eot = pw.whisper_token_eot(ctx)
        tokens: list[int] = []
        texts: list[str] = []
        for s in range(pw.whisper_full_n_segments(ctx)):
            texts.append(pw.whisper_full_get_segment_text(ctx, s).decode("utf-8", "replace"))
            for t in range(pw.whisper_full_n_tokens(ctx, s)):
                tid = pw.whisper_full_get_token_id(ctx, s, t)
                if tid < eot:
                    tokens.append(tid)
        return CppTranscript(text="".join(texts).strip(), tokens=tokens)

    def transcribe_clips(
        self, audios: Sequence[np.ndarray], language: str | None = None
    ) -> list[CppTranscript]:
        return [self.transcribe(a, language) for a in audios]
