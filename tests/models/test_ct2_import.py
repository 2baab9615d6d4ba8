"""CTranslate2 -> transformers conversion: exact on tiny models, token-identical on real base."""

from __future__ import annotations

import json

import ctranslate2
import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperTokenizer

from tests.tiny import save_tiny_whisper
from whispertune.models.builtin import builtin_ct2_dir, builtin_tokenizer_file
from whispertune.models.ct2_import import (
    build_tokenizer,
    convert_ct2_to_hf,
    imported_hf_dir,
    read_ct2_model,
)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "hf")


def _ct2_export(hf_dir, out, quantization):
    converter = ctranslate2.converters.TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]
    )
    converter.convert(str(out), quantization=quantization, force=True)
    return out


@pytest.mark.parametrize("quantization,tol", [("float32", 0.0), ("float16", 1e-3), ("int8", 0.02)])
def test_roundtrip_restores_every_parameter(tiny_hf, tmp_path, quantization, tol):
    ct2_dir = _ct2_export(tiny_hf, tmp_path / "ct2", quantization)
    out = convert_ct2_to_hf(ct2_dir, tmp_path / "back")
    original = WhisperForConditionalGeneration.from_pretrained(tiny_hf, dtype=torch.float32)
    back = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    a, b = original.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for name, tensor in a.items():
        assert tensor.shape == b[name].shape, name
        scale = float(tensor.abs().max()) or 1.0
        err = float((tensor - b[name]).abs().max()) / scale
        assert err <= tol, f"{name}: relative error {err} > {tol}"
    # the config facts are rebuilt from shapes alone
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "encoder_ffn_dim", "num_mel_bins", "vocab_size"):
        assert getattr(back.config, key) == getattr(original.config, key), key


def test_written_checkpoint_is_complete_for_other_tools(tiny_hf, tmp_path):
    out = convert_ct2_to_hf(_ct2_export(tiny_hf, tmp_path / "ct2", "float32"), tmp_path / "back")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "generation_config.json", "vocab.json", "merges.txt"):
        assert (out / name).is_file(), name
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["feature_size"] == 80
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["lang_to_id"]["<|zh|>"] == 50260
    assert gen["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert gen["no_timestamps_token_id"] == 50363
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["<|endoftext|>"] == 50257 and len(vocab) >= 50257


def test_tokenizer_gets_all_timestamp_tokens_after_notimestamps():
    tok = build_tokenizer(builtin_tokenizer_file("base"), 51865)
    assert len(tok) == 51865
    notimestamps = tok.convert_tokens_to_ids("<|notimestamps|>")
    assert tok.convert_tokens_to_ids("<|0.00|>") == notimestamps + 1
    assert tok.convert_tokens_to_ids("<|30.00|>") == 51864
    assert tok.convert_tokens_to_ids("<|1.02|>") == notimestamps + 1 + 51
    # transformers finds timestamps as all_special_ids[-1] + 1: timestamps must not be special
    assert tok.all_special_ids[-1] == notimestamps
    ids = tok("<|0.00|>你好<|1.00|>", add_special_tokens=False).input_ids
    assert ids[0] == notimestamps + 1 and ids[-1] == notimestamps + 1 + 50
    assert tok.decode(ids, skip_special_tokens=True) == "你好"
    assert "<|1.00|>" in tok.decode(ids, decode_with_timestamps=True)


def test_tokenizer_survives_save_and_reload(tmp_path):
    tok = build_tokenizer(builtin_tokenizer_file("base"), 51865)
    tok.save_pretrained(tmp_path)
    again = WhisperTokenizer.from_pretrained(tmp_path)
    assert len(again) == 51865
    assert again.all_special_ids[-1] == 50363
    again.set_prefix_tokens(language="zh", task="transcribe", predict_timestamps=False)
    assert again("你好").input_ids[:4] == [50258, 50260, 50359, 50363]


def test_truncated_model_file_is_a_clear_error(tmp_path):
    from whispertune.errors import UserError

    data = (builtin_ct2_dir("tiny.en") / "model.bin").read_bytes()[:5000]
    (tmp_path / "model.bin").write_bytes(data)
    with pytest.raises(UserError, match="truncated or not a CTranslate2"):
        read_ct2_model(tmp_path / "model.bin")


@pytest.mark.slow
def test_builtin_base_gives_faster_whisper_greedy_tokens(shared_data):
    """Same mel input -> identical greedy token ids from CTranslate2 and the converted model."""
    from faster_whisper.feature_extractor import FeatureExtractor

    from whispertune.audio import load_audio

    ct2_dir = builtin_ct2_dir("base")
    model = WhisperForConditionalGeneration.from_pretrained(
        imported_hf_dir(ct2_dir), dtype=torch.float32
    ).eval()
    runtime = ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32")
    fe = FeatureExtractor(feature_size=80)
    clips = [(shared_data / "en/jfk/jfk.flac", "en")] + [
        (shared_data / f"zh/aishell_s0150/clips/BAC009S0150W0{n}.opus", "zh")
        for n in (441, 442, 443, 460, 480)
    ]
    for path, lang in clips:
        feats = fe(load_audio(path))[:, :3000]
        feats = np.pad(feats, ((0, 0), (0, 3000 - feats.shape[1]))).astype(np.float32)
        prompt = ["<|startoftranscript|>", f"<|{lang}|>", "<|transcribe|>", "<|notimestamps|>"]
        ref = runtime.generate(ctranslate2.StorageView.from_array(feats[None]), [prompt],
                               beam_size=1, max_length=448)[0].sequences_ids[0]
        with torch.no_grad():
            out = model.generate(torch.from_numpy(feats[None]), language=lang,
                                 task="transcribe", num_beams=1, do_sample=False)
        ours = [t for t in out[0].tolist() if t < 50257]
        assert ours == ref, path.name
        assert len(ours) > 5


@pytest.mark.slow
def test_builtin_tiny_en_converts_and_speaks_english(shared_data):
    from whispertune.audio import load_audio
    from whispertune.backends import DecodeOptions, create_transcriber

    hf = create_transcriber("builtin:tiny.en", "transformers")
    text = hf.transcribe_clips([load_audio(shared_data / "en/jfk/jfk.flac")],
                               DecodeOptions(beam_size=1))[0].text
    assert "ask not what your country" in text.lower()
