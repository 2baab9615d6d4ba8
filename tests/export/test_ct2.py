"""``export ct2``: faster-whisper loads and runs our export unchanged, with the same output as
our own CT2 backend; support files are written; nothing is overwritten without --force;
adapters are merged in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tiny import save_tiny_whisper
from whispertune.audio import load_audio
from whispertune.backends import DecodeOptions, create_transcriber
from whispertune.cli import main
from whispertune.export.ct2 import export_ct2
from whispertune.output_style import OutputStyle, read_style, write_style

# as decoded: these tests compare decoders (rescoring, tested on its own, off)
GREEDY = DecodeOptions(
    language="zh", beam_size=1, temperatures=[0.0], max_new_tokens=12, rescore=False
)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "hf")


def _fw_tokens(model_dir, audio, **kw):
    from faster_whisper import WhisperModel

    fw = WhisperModel(str(model_dir), device="cpu", compute_type="float32", cpu_threads=1)
    segments, info = fw.transcribe(
        audio, language="zh", without_timestamps=True, condition_on_previous_text=False,
        temperature=0.0, vad_filter=False, **kw)
    return [t for s in segments for t in s.tokens]


def test_export_has_support_files_and_runs_in_faster_whisper(tiny_hf, tmp_path):
    out = export_ct2(str(tiny_hf), tmp_path / "ct2", quantization="float32")
    names = {p.name for p in out.iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= names
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 80
    # a 30 s window: no padding, so faster-whisper's features equal ours exactly
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000 * 30) * 0.1).astype(np.float32)
    ours = create_transcriber(str(out), "ct2", compute_type="float32", threads=1)
    expected = ours.transcribe_clips([audio], GREEDY)[0].tokens
    assert _fw_tokens(out, audio, beam_size=1, max_new_tokens=12) == expected


def test_export_refuses_to_overwrite_without_force(tiny_hf, tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    args = ["export", "ct2", "--model", str(tiny_hf), "--output", str(target),
            "--quantization", "float32"]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (target / "keep.txt").read_text() == "mine"
    assert main([*args, "--force"]) == 0
    assert not (target / "keep.txt").exists() and (target / "model.bin").is_file()


def test_missing_preprocessor_config_is_written(tiny_hf, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_hf, bare)
    (bare / "preprocessor_config.json").unlink()
    out = export_ct2(str(bare), tmp_path / "ct2", quantization="int8")
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 80


def test_adapter_is_merged_into_the_export(tiny_hf, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_hf)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # fresh LoRA is a no-op (B = 0); make it change the model
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg_path = tmp_path / "adapter/adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(tiny_hf)
    cfg_path.write_text(json.dumps(cfg))
    write_style(tmp_path / "adapter", OutputStyle(numerals="hanzi"))

    merged = export_ct2(str(tmp_path / "adapter"), tmp_path / "merged", quantization="float32")
    assert read_style(merged) == OutputStyle(numerals="hanzi")  # the export writes as trained
    plain = export_ct2(str(tiny_hf), tmp_path / "plain", quantization="float32")
    rng = np.random.default_rng(2)
    audio = (rng.standard_normal(16000 * 30) * 0.1).astype(np.float32)
    hf = create_transcriber(str(tmp_path / "adapter"), "transformers", threads=1)
    expected = hf.transcribe_clips([audio], GREEDY)[0].tokens  # peft applied, in torch
    got = _fw_tokens(merged, audio, beam_size=1, max_new_tokens=12)
    # (CTranslate2 may stop a random model's endless output earlier than transformers)
    assert len(got) >= 4 and got == expected[: len(got)]
    assert got != _fw_tokens(plain, audio, beam_size=1, max_new_tokens=12)


@pytest.mark.slow
def test_builtin_base_export_matches_our_backend_in_faster_whisper(tmp_path, shared_data):
    """The real model: faster-whisper on our int8 export decodes the same tokens as our
    batched backend (beam 5) on full 30 s windows, and the same timestamps. Our backend with
    CTranslate2's own int8 encoder, the one faster-whisper runs (on a CPU with native bf16 it
    would otherwise encode in bf16: other numbers, other near ties)."""
    from faster_whisper import WhisperModel

    from whispertune.backends.ct2 import CT2Transcriber

    out = export_ct2("builtin:base", tmp_path / "base", quantization="int8")
    audio = load_audio(shared_data / "longform/S0150_W0441-W0476.opus")
    windows = [audio[:480000], audio[480000 * 2 : 480000 * 3]]
    fw = WhisperModel(str(out), device="cpu", compute_type="int8", cpu_threads=2)
    ours = CT2Transcriber(str(out), threads=2, bf16_encoder=False)
    got = ours.transcribe_clips(
        windows, DecodeOptions(language="zh", temperatures=[0.0], rescore=False), timestamps=True
    )
    for window, t in zip(windows, got, strict=True):
        segments, _ = fw.transcribe(window, language="zh", beam_size=5, temperature=0.0,
                                    condition_on_previous_text=False)
        # faster-whisper decodes the unfinished tail again in a second window (seek > 0)
        first = [s for s in segments if s.seek == 0]
        ours = [x for x in t.segments if x.final]
        assert [(s.start, s.end) for s in first] == [(x.start, x.end) for x in ours]
        assert [s.text for s in first] == [x.text for x in ours]
