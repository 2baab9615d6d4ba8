"""GGML export, checked by whisper.cpp itself (pywhispercpp 1.5.1 = whisper.cpp 1.8.5).

Fast tests use tiny models built here. A random tiny model decodes chaotic near-ties that two
runtimes cannot be expected to break the same way, so the text tests plant a sequence in the
decoder's positional embeddings (a model "fine-tuned" to say one sentence, with wide logit
margins): then whisper.cpp and transformers must agree token for token, which checks the
vocabulary bytes, token ids and prompt handling. The weights themselves are checked
numerically: whisper.cpp's logits for the same mel input against transformers'.
Slow tests export the real built-in base and compare text on real speech.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny import save_tiny_whisper
from whispertune.errors import UserError
from whispertune.export import ggml
from whispertune.export.ggml import (
    WhisperCpp,
    export_ggml,
    quantize_ggml,
    quantize_reference,
    whisper_cpp_model_info,
)

PLANTED_TEXT = "其中有两个是内因的指标, ask not what your country can do for you."
PROMPT_LEN = 4  # <|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|>
# sha256 of the vocabulary section (int32 length + bytes per token) of whisper.cpp's own
# models/for-tests-ggml-base.bin (pywhispercpp 1.5.1 sdist): 50,257 byte-level tokens, written
# there with the 1,476 tokens that are not valid UTF-8 on their own (pieces of multi-byte
# characters) replaced by U+FFFD. Real models keep those raw bytes (whisper.cpp joins the
# pieces of a character), so ours are compared through the same lossy decoding.
WHISPER_CPP_BASE_VOCAB_LOSSY_SHA256 = (
    "799b1c185b4ec7d0b5a61fdd0b81e25f06d3e0ba700af4958656664a77e6fba2"
)
# A few of that file's mel filter values (80 x 201), [mel, frequency bin].
WHISPER_CPP_MEL_SAMPLES = {
    (0, 1): 0.024862595,
    (10, 11): 0.004954375,
    (40, 43): 0.014735566,
    (79, 193): 0.003141313,
}


@pytest.fixture(autouse=True)
def _no_ggml_backtrace(monkeypatch):
    # ggml_abort tries to attach gdb for a backtrace, which can hang a test run forever.
    monkeypatch.setenv("GGML_NO_BACKTRACE", "1")


def save_tiny(path: Path, **overrides) -> Path:
    """A tiny random Whisper that whisper.cpp accepts (it hard-codes ffn = 4 x d_model)."""
    return save_tiny_whisper(path, encoder_ffn_dim=256, decoder_ffn_dim=256, **overrides)


def plant_sentence(model_dir: Path, text: str, alpha: float = 10.0) -> list[int]:
    """Make the model's greedy output ``text`` whatever the audio; returns the token ids.

    Token embeddings are normalised to one length and decoder position ``PROMPT_LEN - 1 + i``
    gets ``alpha`` times the embedding of the i-th target token (then <|endoftext|>): the
    residual stream, hence the tied output projection, points at the next token.
    """
    from transformers import WhisperForConditionalGeneration

    from whispertune.models.loading import load_processor
    from whispertune.models.sources import resolve

    tokenizer = load_processor(resolve(str(model_dir))).tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    suppressed = set(model.generation_config.suppress_tokens or [])
    assert not suppressed & set(ids), "planted tokens must not be suppressed"
    with torch.no_grad():
        emb = model.model.decoder.embed_tokens.weight
        zero = emb.norm(dim=1) == 0  # the pad row (<|endoftext|>, the one to end on)
        emb[zero] = torch.randn(
            int(zero.sum()), emb.shape[1], generator=torch.Generator().manual_seed(0)
        )
        # one length, 3: confident logits, so no runtime's guard decodes again
        emb.copy_(emb / emb.norm(dim=1, keepdim=True) * 3.0)
        pos = model.model.decoder.embed_positions.weight
        for i, token in enumerate([*ids, tokenizer.eos_token_id]):
            pos[PROMPT_LEN - 1 + i] += alpha * emb[token]
    model.save_pretrained(model_dir)
    return ids


def read_ggml(path: Path) -> dict:
    """Parse a GGML Whisper file: hparams, filters, vocabulary and the tensor table."""
    buf = path.read_bytes()
    magic, *hp = struct.unpack_from("<I11i", buf, 0)
    off = 48
    n_mel, n_fft = struct.unpack_from("<2i", buf, off)
    off += 8
    filters = np.frombuffer(buf, "<f4", n_mel * n_fft, off).reshape(n_mel, n_fft)
    off += n_mel * n_fft * 4
    (n_vocab,) = struct.unpack_from("<i", buf, off)
    off += 4
    vocab = []
    for _ in range(n_vocab):
        (n,) = struct.unpack_from("<i", buf, off)
        vocab.append(buf[off + 4 : off + 4 + n])
        off += 4 + n
    tensors = {}
    while off < len(buf):
        n_dims, name_len, ttype = struct.unpack_from("<3i", buf, off)
        off += 12
        ne = struct.unpack_from(f"<{n_dims}i", buf, off)
        off += 4 * n_dims
        name = buf[off : off + name_len].decode()
        off += name_len
        count = int(np.prod(ne))
        size = {0: 4 * count, 1: 2 * count}.get(ttype)
        if size is None:
            block = {q.ggml_type: q.block_bytes for q in ggml.QUANT_TYPES.values()}[ttype]
            size = count // 32 * block
        tensors[name] = {"ne": ne, "type": ttype, "data": buf[off : off + size]}
        off += size
    keys = "n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer n_text_ctx".split()
    keys += "n_text_state n_text_head n_text_layer n_mels ftype".split()
    return {
        "magic": magic,
        "hparams": dict(zip(keys, hp, strict=True)),
        "filters": filters,
        "vocab": vocab,
        "tensors": tensors,
    }


def greedy_options(language: str, **extra):
    """Plain greedy decoding: beam 1, and the hallucination guards (temperature fallback,
    no-speech skip) off where DecodeOptions has them, as WhisperCpp decodes."""
    import dataclasses

    from whispertune.backends.base import DecodeOptions

    guards_off = {
        "temperatures": [0.0],
        "compression_ratio_threshold": None,
        "log_prob_threshold": None,
        "no_speech_threshold": None,
        "rescore": False,  # whisper.cpp has no rescoring: compare what the models decode
    }
    names = {f.name for f in dataclasses.fields(DecodeOptions)}
    kw = {k: v for k, v in guards_off.items() if k in names}
    return DecodeOptions(language=language, beam_size=1, **kw, **extra)


def hf_greedy(model: str | Path, audios, language: str):
    from whispertune.backends import create_transcriber

    tr = create_transcriber(str(model), "transformers", threads=2)
    try:
        return tr.transcribe_clips(list(audios), greedy_options(language, max_new_tokens=64))
    finally:
        tr.close()


def tone(seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[int]]:
    path = save_tiny(tmp_path_factory.mktemp("planted") / "hf")
    return path, plant_sentence(path, PLANTED_TEXT)


# --------------------------------------------------------------------------- format


def test_vocabulary_and_mel_filters_match_whisper_cpp_reference(planted, tmp_path):
    path, _ = planted
    out = export_ggml(path, tmp_path / "m.bin", verify=False)
    f = read_ggml(out)
    assert f["magic"] == ggml.GGML_MAGIC
    assert len(f["vocab"]) == 50257  # BPE tokens only; whisper.cpp numbers the specials
    lossy = hashlib.sha256()
    for token in f["vocab"]:
        text = token.decode("utf-8", "replace").encode()
        lossy.update(struct.pack("<i", len(text)) + text)
    assert lossy.hexdigest() == WHISPER_CPP_BASE_VOCAB_LOSSY_SHA256
    assert f["vocab"][94] == b"\xa1"  # a raw byte, not U+FFFD
    assert f["vocab"][9572].decode() == "其"
    assert f["filters"].shape == (80, 201)
    for (i, j), value in WHISPER_CPP_MEL_SAMPLES.items():
        assert f["filters"][i, j] == pytest.approx(value, abs=1e-8)


def test_layout_dtypes_and_header(planted, tmp_path):
    path, _ = planted
    config = json.loads((path / "config.json").read_text())
    f16 = read_ggml(export_ggml(path, tmp_path / "f16.bin", verify=False))
    hp = f16["hparams"]
    assert hp["ftype"] == 1 and hp["n_text_ctx"] == config["max_target_positions"]
    assert hp["n_audio_state"] == config["d_model"] and hp["n_mels"] == 80
    t = f16["tensors"]
    assert len(t) == 11 + 15 * 2 + 24 * 2  # what whisper.cpp's loader creates for 2 + 2 layers
    assert t["encoder.conv1.bias"]["ne"] == (1, 64) and t["encoder.conv1.bias"]["type"] == 0
    assert t["encoder.conv1.weight"]["ne"] == (3, 80, 64) and t["encoder.conv1.weight"]["type"] == 1
    assert t["decoder.positional_embedding"]["type"] == 0
    assert t["encoder.blocks.0.attn.query.bias"]["type"] == 0
    assert t["decoder.blocks.1.cross_attn.key.weight"]["type"] == 1
    assert "decoder.proj.weight" not in t  # whisper.cpp projects with the token embedding

    q8 = read_ggml(export_ggml(path, tmp_path / "q8.bin", quantize="q8_0", verify=False))
    assert q8["hparams"]["ftype"] == 2007  # GGML_QNT_VERSION * 1000 + GGML_FTYPE_MOSTLY_Q8_0
    q = q8["tensors"]
    assert q["decoder.token_embedding.weight"]["type"] == 8
    assert q["encoder.blocks.0.mlp.0.weight"]["type"] == 8
    assert q["encoder.conv2.weight"]["type"] == 1  # 3-D: stays f16, as the loader requires
    assert q["encoder.positional_embedding"]["type"] == 0
    assert q["decoder.ln.weight"]["type"] == 0


def test_quantizers_match_ggml_byte_for_byte():
    if ggml._ggml_library() is None:
        pytest.skip("pywhispercpp's libggml-base not found")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 256)) * 0.05).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, :32] = 0.5  # ties for the largest magnitude
    x[1, 7] = -0.5
    x[2] = np.linspace(-1, 1, 256, dtype=np.float32)  # exact .5 roundings
    for kind in ggml.QUANTIZATIONS:
        assert quantize_ggml(x, kind) == quantize_reference(x, kind), kind


# --------------------------------------------------------------------------- whisper.cpp


def test_whisper_cpp_says_what_transformers_says(planted, tmp_path):
    path, ids = planted
    audio = tone()
    [hf] = hf_greedy(path, [audio], "en")
    assert hf.tokens == ids  # the planted sentence, so margins are wide
    for quantize in (None, "q8_0"):
        out = export_ggml(path, tmp_path / f"{quantize}.bin", quantize=quantize)
        info = whisper_cpp_model_info(out)
        assert info["n_vocab"] == 51865 and info["n_audio_layer"] == 2 and info["multilingual"]
        cpp = WhisperCpp(out, threads=2).transcribe(audio, "en")
        assert cpp.tokens == hf.tokens, quantize
        assert cpp.text == hf.text == PLANTED_TEXT


def _libwhisper() -> ctypes.CDLL:
    spec = importlib.util.find_spec("pywhispercpp")
    libs = sorted((Path(spec.origin).parents[1] / "pywhispercpp.libs").glob("libwhisper*.so*"))
    if not libs:
        pytest.skip("pywhispercpp's libwhisper not found")
    import _pywhispercpp  # noqa: F401  (loads ggml's backends the same way the app does)

    lib = ctypes.CDLL(str(libs[0]))
    lib.whisper_init_from_file.restype = ctypes.c_void_p
    lib.whisper_init_from_file.argtypes = [ctypes.c_char_p]
    lib.whisper_set_mel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.whisper_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.whisper_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 3
    lib.whisper_get_logits.restype = ctypes.POINTER(ctypes.c_float)
    lib.whisper_get_logits.argtypes = [ctypes.c_void_p]
    lib.whisper_free.argtypes = [ctypes.c_void_p]
    return lib


def test_whisper_cpp_logits_match_transformers(tmp_path):
    """Every weight in the right place: the same mel in, the same next-token logits out."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    path = save_tiny(tmp_path / "hf")
    out = export_ggml(path, tmp_path / "m.bin")
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(16000 * 5)).astype(np.float32)
    feats = WhisperFeatureExtractor.from_pretrained(path)(
        audio, sampling_rate=16000, return_tensors="np"
    ).input_features[0]
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    tokens = np.array([50258, 50259, 50359, 50363, 400, 370, 452], dtype=np.int32)

    lib = _libwhisper()
    ctx = lib.whisper_init_from_file(str(out).encode())
    assert ctx
    try:
        assert lib.whisper_set_mel(ctx, feats.ctypes.data, feats.shape[1], feats.shape[0]) == 0
        assert lib.whisper_encode(ctx, 0, 2) == 0
        assert lib.whisper_decode(ctx, tokens.ctypes.data, len(tokens), 0, 2) == 0
        # rows for every position, but whisper.cpp only computes the last one
        logits = np.ctypeslib.as_array(lib.whisper_get_logits(ctx), shape=(len(tokens), 51865))
        cpp = logits[-1].copy()
    finally:
        lib.whisper_free(ctx)

    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # the f16 file's rounding, so only the
            if p.ndim > 1 and "embed_positions" not in name:  # runtimes' arithmetic differs
                p.copy_(p.half().float())
        hf = (
            model(
                input_features=torch.from_numpy(feats)[None],
                decoder_input_ids=torch.from_numpy(tokens.astype(np.int64))[None],
            )
            .logits[0, -1]
            .numpy()
        )
    # ggml multiplies f16 weights with f16-rounded activations: ~1 % of the logit scale.
    assert np.abs(cpp - hf).max() < 0.03 * np.abs(hf).max()
    assert np.corrcoef(cpp, hf)[0, 1] > 0.999


def test_adapter_is_merged_before_export(planted, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    path, ids = planted
    peft_model = get_peft_model(
        WhisperForConditionalGeneration.from_pretrained(path),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    merged = peft_model.merge_and_unload()
    out = export_ggml(adapter, tmp_path / "adapter.bin")

    f = read_ggml(out)["tensors"]
    stored = np.frombuffer(f["decoder.blocks.0.attn.query.weight"]["data"], np.float16)
    want = merged.model.decoder.layers[0].self_attn.q_proj.weight.detach().numpy()
    base = WhisperForConditionalGeneration.from_pretrained(path)
    before = base.model.decoder.layers[0].self_attn.q_proj.weight.detach().numpy()
    assert np.array_equal(stored, want.astype(np.float16).ravel())
    assert not np.array_equal(stored, before.astype(np.float16).ravel())

    audio = tone()
    [hf] = hf_greedy(adapter, [audio], "en")
    cpp = WhisperCpp(out, threads=2).transcribe(audio, "en")
    assert cpp.tokens == hf.tokens and cpp.text == hf.text


def test_f32_file_loads(planted, tmp_path):
    # Loading only: whisper.cpp 1.8.5's CPU conv1d aborts on f32 kernels (whisper.cpp#2557).
    path, _ = planted
    out = export_ggml(path, tmp_path / "f32.bin", dtype="f32")
    assert whisper_cpp_model_info(out)["ftype"] == 0
    t = read_ggml(out)["tensors"]
    assert {v["type"] for v in t.values()} == {0}


# --------------------------------------------------------------------------- bad input


def test_refuses_non_whisper_checkpoint(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(
        tmp_path / "gpt2"
    )
    with pytest.raises(UserError, match="not Whisper"):
        export_ggml(tmp_path / "gpt2", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_refuses_what_whisper_cpp_cannot_run(tmp_path):
    path = save_tiny_whisper(tmp_path / "hf")  # ffn 128 = 2 x d_model
    with pytest.raises(UserError, match="4 x d_model"):
        export_ggml(path, tmp_path / "out.bin")
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob(".*.tmp"))


def test_existing_output_needs_force(planted, tmp_path):
    path, _ = planted
    out = tmp_path / "model.bin"
    out.write_bytes(b"keep me")
    with pytest.raises(UserError, match="--force"):
        export_ggml(path, out)
    assert out.read_bytes() == b"keep me"
    export_ggml(path, out, force=True, verify=False)
    assert out.read_bytes()[:4] == struct.pack("<I", ggml.GGML_MAGIC)
    with pytest.raises(UserError, match="directory"):
        export_ggml(path, tmp_path)


def test_a_file_whisper_cpp_rejects_is_never_put_in_place(planted, tmp_path, monkeypatch):
    path, _ = planted
    good = export_ggml(path, tmp_path / "good.bin", verify=False)
    (tmp_path / "cut.bin").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="not all tensors loaded"):
        whisper_cpp_model_info(tmp_path / "cut.bin")  # a crash in whisper.cpp, reported

    real = ggml.ggml_tensor_name

    def misnamed(name: str) -> str | None:
        out = real(name)
        return "encoder.ln_post.gamma" if out == "encoder.ln_post.weight" else out

    monkeypatch.setattr(ggml, "ggml_tensor_name", misnamed)
    with pytest.raises(UserError, match="unknown tensor 'encoder.ln_post.gamma'"):
        export_ggml(path, tmp_path / "bad.bin")
    assert not (tmp_path / "bad.bin").exists() and not list(tmp_path.glob(".bad.bin*"))


def test_bad_options(planted, tmp_path):
    path, _ = planted
    with pytest.raises(UserError, match="needs --dtype f16"):
        export_ggml(path, tmp_path / "a.bin", dtype="f32", quantize="q8_0")
    with pytest.raises(UserError, match="q8_0"):
        export_ggml(path, tmp_path / "a.bin", quantize="q3_k")
    with pytest.raises(UserError, match="f16"):
        export_ggml(path, tmp_path / "a.bin", dtype="bf16")


def test_cli(planted, tmp_path, capsys):
    from whispertune.cli import main

    path, _ = planted
    out = tmp_path / "cli.bin"
    args = ["export", "ggml", "--model", str(path), "--output", str(out), "--quantize", "q5_0"]
    assert main(args) == 0
    assert "q5_0" in capsys.readouterr().out and out.is_file()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_cli_help_explains_every_option(capsys):
    from whispertune.cli import main

    with pytest.raises(SystemExit):
        main(["export", "ggml", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--model", "--output", "--dtype", "--quantize", "--force", "--no-verify"):
        assert option in text
    assert "(default: builtin:base)" in text and "(default: f16)" in text
    assert "default: not quantized" in text and "(default: False)" in text
    assert "docs/export.md" in text  # measured behaviour lives there, not in the help


# --------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def base_clips(shared_data):
    from whispertune.audio import load_audio

    zh = sorted((shared_data / "zh" / "aishell_s0150" / "clips").glob("*.opus"))[:1]
    return [
        (load_audio(shared_data / "en" / "jfk" / "jfk.flac"), "en"),
        *((load_audio(p), "zh") for p in zh),
    ]


@pytest.fixture(scope="module")
def base_reference(base_clips):
    """The transformers backend's greedy transcripts of the built-in base (one model load)."""
    from whispertune.backends import create_transcriber

    tr = create_transcriber("builtin:base", "transformers", threads=2)
    try:
        return [tr.transcribe_clips([a], greedy_options(lang))[0] for a, lang in base_clips]
    finally:
        tr.close()


@pytest.mark.slow
def test_builtin_base_f16_text_equals_transformers(base_clips, base_reference, tmp_path):
    out = export_ggml("builtin:base", tmp_path / "base.bin")
    cpp = WhisperCpp(out, threads=2)
    for (audio, lang), ref in zip(base_clips, base_reference, strict=True):
        got = cpp.transcribe(audio, lang)
        assert got.text == ref.text
        assert got.tokens == ref.tokens


@pytest.mark.slow
def test_builtin_base_q8_0_nearly_equals_transformers(base_clips, base_reference, tmp_path):
    from whispertune.evaluate import score_pairs
    from whispertune.text import normalize

    out = export_ggml("builtin:base", tmp_path / "base-q8_0.bin", quantize="q8_0")
    assert out.stat().st_size < 0.6 * 147_951_465  # the f16 file's size
    cpp = WhisperCpp(out, threads=2)
    hyps = [normalize(cpp.transcribe(a, lang).text) for a, lang in base_clips]
    refs = [normalize(r.text) for r in base_reference]
    s, d, i, n, _ = score_pairs(refs, hyps, "cer")
    assert (s + d + i) / n <= 0.02  # CER of q8_0 against the fp32 transcript
