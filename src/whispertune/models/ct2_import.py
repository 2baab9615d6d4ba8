"""Turn a CTranslate2 (faster-whisper) Whisper directory into a transformers checkpoint.

Why: the only real Whisper weights that can be had without a model hub here (and what many
users have on disk) are faster-whisper's CTranslate2 files, but fine-tuning needs PyTorch
weights. CTranslate2 stores exactly the transformers parameters, with self-attention Q/K/V fused
in one matrix (K without bias), cross-attention K/V fused, and fp16 or int8 storage, so the
conversion is a rename-and-split, done once and cached.

What the CTranslate2 files do not carry is rebuilt from what they do: the model shape from the
weight shapes, the special token ids from ``tokenizer.json``, the 1,501 timestamp tokens
(``<|0.00|>`` … ``<|30.00|>``) that faster-whisper's ``tokenizer.json`` lacks, and a generation
config (language ids, alignment heads, suppressed tokens) so ``generate()`` works with a language,
a task and timestamps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np

from whispertune.errors import UserError
from whispertune.models.cache import cache_dir

logger = logging.getLogger(__name__)

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")

_NON_LANGUAGE_SPECIALS = {
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|nospeech|>",
    "<|notimestamps|>",
}


def is_ct2_dir(path: Path) -> bool:
    return (
        (path / "model.bin").is_file()
        and (path / "config.json").is_file()
        and not (path / "model.safetensors").exists()
    )


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """Read CTranslate2's ``model.bin`` (format written by ``ModelSpec._serialize``).

    Returns the spec name and every variable (aliases resolved) as a numpy array; bfloat16
    arrays are returned as float32.
    """
    path = Path(path)
    try:
        # mapped, not read: the arrays are views of the file (its 145 MB for base are not
        # copied into the heap only to be converted and dropped)
        with open(path, "rb") as f:
            buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    except ValueError:  # an empty file cannot be mapped
        buf = memoryview(b"")
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from(fmt, buf, offset)
        offset += struct.calcsize(fmt)
        return value[0]

    def take_string() -> str:
        nonlocal offset
        n = take("H")
        s = bytes(buf[offset : offset + n - 1]).decode("utf-8")
        offset += n
        return s

    try:
        version = take("I")
        if version < 5:
            raise UserError(f"{path}: CTranslate2 model format {version} is too old to import")
        spec = take_string()
        take("I")  # spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = take_string()
            rank = take("B")
            dims = [take("I") for _ in range(rank)]
            dtype = _CT2_DTYPES[take("B")]
            nbytes = take("I")
            raw = buf[offset : offset + nbytes]
            offset += nbytes
            if len(raw) != nbytes:
                raise IndexError(name)
            if dtype == "bfloat16":
                u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                arr = u16.view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=dtype)
            variables[name] = arr.reshape(dims)
        for _ in range(take("I")):
            alias, target = take_string(), take_string()
            variables[alias] = variables[target]
    except (struct.error, IndexError, ValueError) as e:
        raise UserError(f"{path}: truncated or not a CTranslate2 model file") from e
    return spec, variables


def _weight(variables: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """A linear weight as float32, dequantizing int8 storage (w_q = round(w * scale))."""
    w = variables[f"{prefix}/weight"]
    scale = variables.get(f"{prefix}/weight_scale")
    if w.dtype == np.int8:
        if scale is None:
            raise UserError(f"int8 weight {prefix} has no weight_scale")
        return w.astype(np.float32) / scale.astype(np.float32).reshape(-1, *([1] * (w.ndim - 1)))
    return w.astype(np.float32)


def _f32(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    return variables[name].astype(np.float32)


def ct2_to_state_dict(
    variables: dict[str, np.ndarray], sides: tuple[str, ...] = ("encoder", "decoder")
) -> tuple[dict[str, np.ndarray], dict]:
    """Map CTranslate2 Whisper variables onto ``WhisperForConditionalGeneration`` parameter names.

    Returns the state dict and the shape facts needed for a WhisperConfig. ``sides``: the
    halves to convert (rescoring reads the decoder only: the encoder would be 80 MB more).
    """
    sd: dict[str, np.ndarray] = {}
    layer_re = re.compile(r"^(encoder|decoder)/layer_(\d+)/")
    layers = {"encoder": set(), "decoder": set()}
    for name in variables:
        m = layer_re.match(name)
        if m:
            layers[m.group(1)].add(int(m.group(2)))
    n_enc, n_dec = len(layers["encoder"]), len(layers["decoder"])
    if not n_enc or not n_dec or "encoder/conv1/weight" not in variables:
        raise UserError("not a CTranslate2 Whisper model (no encoder conv/layers found)")
    d_model = variables["encoder/conv1/weight"].shape[0]

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = _weight(variables, src)
        if f"{src}/bias" in variables:
            sd[f"{dst}.bias"] = _f32(variables, f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = _f32(variables, f"{src}/gamma")
        sd[f"{dst}.bias"] = _f32(variables, f"{src}/beta")

    def fused(dst_prefix: str, names: tuple[str, ...], src: str) -> None:
        w = _weight(variables, src)
        b = _f32(variables, f"{src}/bias")
        for i, n in enumerate(names):
            sd[f"{dst_prefix}.{n}.weight"] = w[i * d_model : (i + 1) * d_model]
            if n != "k_proj":  # Whisper's key projections have no bias (CT2 stores zeros)
                sd[f"{dst_prefix}.{n}.bias"] = b[i * d_model : (i + 1) * d_model]

    for side in sides:
        sd[f"model.{side}.embed_positions.weight"] = _f32(
            variables, f"{side}/position_encodings/encodings"
        )
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
    for conv in ("conv1", "conv2") if "encoder" in sides else ():
        sd[f"model.encoder.{conv}.weight"] = _weight(variables, f"encoder/{conv}")
        sd[f"model.encoder.{conv}.bias"] = _f32(variables, f"encoder/{conv}/bias")
    if "decoder" in sides:
        sd["model.decoder.embed_tokens.weight"] = _weight(variables, "decoder/embeddings")

    # Encoder and decoder layers alike; a decoder layer adds cross-attention between the two.
    for side, layers in (("encoder", n_enc), ("decoder", n_dec)):
        if side not in sides:
            continue
        for i in range(layers):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            qkv = ("q_proj", "k_proj", "v_proj")
            fused(f"{dst}.self_attn", qkv, f"{src}/self_attention/linear_0")
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused(f"{dst}.encoder_attn", ("k_proj", "v_proj"), f"{src}/attention/linear_1")
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    shape = {
        "vocab_size": variables["decoder/embeddings/weight"].shape[0],
        "num_mel_bins": variables["encoder/conv1/weight"].shape[1],
        "d_model": d_model,
        "encoder_layers": n_enc,
        "decoder_layers": n_dec,
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": variables["decoder/position_encodings/encodings"].shape[0],
    }
    return sd, shape


def build_tokenizer(tokenizer_json: Path, vocab_size: int):
    """A transformers Whisper tokenizer from faster-whisper's ``tokenizer.json``.

    Every ``<|...|>`` special token is registered as special (transformers finds the first
    timestamp id as ``all_special_ids[-1] + 1``), and the timestamp tokens missing from the file
    are appended as plain added tokens, so ids match the model's vocabulary one to one.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    specials = [
        t["content"]
        for t in data.get("added_tokens", [])
        if t.get("special") and t["content"] != "<|endoftext|>" and not _is_timestamp(t["content"])
    ]
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tokenizer_json),
        extra_special_tokens=specials,
        pad_token="<|endoftext|>",  # as OpenAI's own tokenizer_config: collators need one
    )
    missing = vocab_size - len(tokenizer)
    if missing > 0:
        if tokenizer.convert_tokens_to_ids("<|notimestamps|>") != len(tokenizer) - 1:
            raise UserError(
                f"{tokenizer_json}: cannot place timestamp tokens: <|notimestamps|> is not the "
                "last "
                "token of the vocabulary"
            )
        tokenizer.add_tokens(
            [
                AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False)
                for i in range(missing)
            ]
        )
    if len(tokenizer) != vocab_size:
        raise UserError(
            f"{tokenizer_json}: tokenizer has {len(tokenizer)} tokens, the model {vocab_size}"
        )
    return tokenizer


def _is_timestamp(token: str) -> bool:
    return re.fullmatch(r"<\|\d+\.\d+\|>", token) is not None


def build_generation_config(tokenizer, ct2_config: dict, model_config):
    """What Whisper's ``generate()`` needs, derived from the tokenizer and the CT2 config."""
    from transformers import GenerationConfig

    vocab = tokenizer.get_vocab()
    specials = [t for t in tokenizer.all_special_tokens if t not in _NON_LANGUAGE_SPECIALS]
    lang_to_id = {
        t: vocab[t]
        for t in specials
        if re.fullmatch(r"<\|[a-z]{2,3}(_[a-z]+)?\|>", t) or t == "<|haw|>"
    }
    lang_ids = set(ct2_config.get("lang_ids") or [])
    if lang_ids:  # trust CT2's own list where it has one
        lang_to_id = {t: i for t, i in lang_to_id.items() if i in lang_ids}
    # OpenAI's rule: English-only checkpoints have 51864 tokens, multilingual ones 51865+
    # (tiny.en's CT2 config still lists language ids, so they cannot decide it).
    multilingual = model_config.vocab_size >= 51865 and len(lang_to_id) > 1
    heads = ct2_config.get("alignment_heads")
    if not heads:
        heads = [
            [layer, head]
            for layer in range(model_config.decoder_layers // 2, model_config.decoder_layers)
            for head in range(model_config.decoder_attention_heads)
        ]
    no_speech = next((vocab[t] for t in ("<|nospeech|>", "<|nocaptions|>") if t in vocab), None)
    gc = GenerationConfig(
        decoder_start_token_id=vocab["<|startoftranscript|>"],
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        max_length=model_config.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        alignment_heads=[list(h) for h in heads],
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        prev_sot_token_id=vocab.get("<|startofprev|>"),
        max_initial_timestamp_index=50,
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if multilingual:
        gc.lang_to_id = dict(sorted(lang_to_id.items(), key=lambda kv: kv[1]))
        gc.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
    if no_speech is not None:
        gc.no_speech_token_id = no_speech
    return gc


# Bump when the conversion's output changes, so cached conversions are redone.
CONVERTER_VERSION = "3"


def _fingerprint(ct2_dir: Path) -> str:
    digest = hashlib.sha256(CONVERTER_VERSION.encode())
    for name in ("config.json", "tokenizer.json", "model.bin"):
        with open(ct2_dir / name, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:20]


def convert_ct2_to_hf(ct2_dir: str | Path, output_dir: str | Path) -> Path:
    """Write a transformers Whisper checkpoint (model, tokenizer, feature extractor, generation
    config, plus ``vocab.json``/``merges.txt`` for tools that read those) to ``output_dir``."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    ct2_dir, output_dir = Path(ct2_dir), Path(output_dir)
    for needed in ("model.bin", "config.json", "tokenizer.json"):
        if not (ct2_dir / needed).is_file():
            raise UserError(f"{ct2_dir}: not a CTranslate2 Whisper directory (no {needed})")
    spec, variables = read_ct2_model(ct2_dir / "model.bin")
    if spec != "WhisperSpec":
        raise UserError(f"{ct2_dir}: a CTranslate2 {spec} model, not Whisper")
    ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    state, shape = ct2_to_state_dict(variables)
    tokenizer = build_tokenizer(ct2_dir / "tokenizer.json", shape["vocab_size"])
    vocab = tokenizer.get_vocab()
    config = WhisperConfig(
        **shape,
        pad_token_id=vocab["<|endoftext|>"],
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        decoder_start_token_id=vocab["<|startoftranscript|>"],
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        tie_word_embeddings=True,
        dtype="float32",
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    missing = [m for m in missing if m != "proj_out.weight"]
    if missing or unexpected:
        raise UserError(
            f"{ct2_dir}: weights do not fit Whisper: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.tie_weights()
    model.generation_config = build_generation_config(tokenizer, ct2_config, config)
    feature_extractor = WhisperFeatureExtractor(feature_size=shape["num_mel_bins"])

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    # transformers 5's processor.save_pretrained writes no preprocessor_config.json: do it here.
    feature_extractor.save_pretrained(output_dir)
    write_vocab_merges(ct2_dir / "tokenizer.json", output_dir)
    return output_dir


def write_vocab_merges(tokenizer_json: Path, output_dir: Path) -> None:
    """``vocab.json`` and ``merges.txt`` (GPT-2 style), which whisper.cpp's converter reads."""
    data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        return
    (output_dir / "vocab.json").write_text(
        json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8"
    )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    (output_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )


def imported_hf_dir(ct2_dir: str | Path) -> Path:
    """The cached transformers checkpoint for a CTranslate2 directory, converting it once.

    The cache key is a hash of the model files, so an edited model is re-converted; the
    conversion goes to a temporary folder renamed into place, so a killed run leaves no
    half-written checkpoint that a later run would trust.
    """
    ct2_dir = Path(ct2_dir).resolve()
    target = cache_dir("ct2-import") / _fingerprint(ct2_dir)
    if (target / ".complete").is_file():
        return target
    logger.info("converting CTranslate2 model %s to transformers (once) -> %s", ct2_dir, target)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert_ct2_to_hf(ct2_dir, tmp)
        (tmp / ".complete").write_text(str(ct2_dir) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
