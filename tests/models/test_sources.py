"""Every accepted --model form resolves; everything else fails fast with a message that helps."""

from __future__ import annotations

import json
import time

import pytest
import torch

from tests.tiny import save_tiny_whisper
from whispertune.errors import UserError
from whispertune.models.builtin import builtin_ct2_dir
from whispertune.models.loading import load_transformers
from whispertune.models.sources import resolve


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "hf")


def test_builtin_names_resolve_without_network():
    base = resolve("builtin:base")
    assert base.kind == "builtin"
    assert (base.path / "model.bin").stat().st_size == 145_217_532
    assert resolve("builtin").path == base.path
    assert resolve("builtin:tiny.en").kind == "builtin"
    with pytest.raises(UserError, match="builtin:base"):
        resolve("builtin:large")


def test_transformers_dir(tiny_hf):
    source = resolve(str(tiny_hf))
    assert source.kind == "hf" and source.hf_dir() == tiny_hf.resolve()
    assert source.native_ct2_dir() is None


def test_ct2_dir_is_converted_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path / "cache"))
    source = resolve(str(builtin_ct2_dir("tiny.en")))
    assert source.kind == "ct2"
    first = source.hf_dir()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve(str(builtin_ct2_dir("tiny.en"))).hf_dir() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    assert not list(first.parent.glob("*.tmp*"))


def test_adapter_dir_resolves_its_base_and_loads_merged(tiny_hf, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    base = WhisperForConditionalGeneration.from_pretrained(tiny_hf)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # make the adapter do something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_hf)

    source = resolve(str(tmp_path / "adapter"))
    assert source.kind == "adapter" and source.base.kind == "hf"
    loaded = load_transformers(source)
    assert not hasattr(loaded.model, "peft_config")  # merged for inference
    feats = torch.randn(1, 80, 3000)
    ids = torch.tensor([[50258, 50260, 50359, 50363]])
    with torch.no_grad():
        merged = loaded.model(input_features=feats, decoder_input_ids=ids).logits
        plain = (
            WhisperForConditionalGeneration.from_pretrained(tiny_hf)
            .eval()(input_features=feats, decoder_input_ids=ids)
            .logits
        )
        adapted = peft_model.eval()(input_features=feats, decoder_input_ids=ids).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)


def test_adapter_with_missing_base_says_how_to_fix(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "gone")})
    )
    with pytest.raises(UserError, match="--base-model"):
        resolve(str(tmp_path / "adapter"))


def test_non_whisper_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="'bert' checkpoint, not Whisper"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("spec", ["", "not a model", "./missing/dir", "/no/such/model"])
def test_unknown_forms_list_what_is_accepted(spec):
    with pytest.raises(UserError, match="accepted"):
        resolve(spec)


def test_empty_dir_and_file_are_refused(tmp_path):
    with pytest.raises(UserError, match="not a model directory"):
        resolve(str(tmp_path))
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(UserError, match="a file, not a model directory"):
        resolve(str(tmp_path / "x.bin"))


def test_hub_id_offline_fails_fast_and_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty hub cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: offline
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        resolve("openai/whisper-small")
    assert time.perf_counter() - start < 10
    assert "not reachable" in str(err.value) and "--model DIR" in str(err.value)


def test_hub_id_with_hf_hub_offline_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        resolve("openai/whisper-tiny")


# -- reliability (issue 25): mistyped paths, truncated weights, an adapter on another base ------


@pytest.mark.parametrize("spec", ["./tiny-typo", "models/tiny-typo", "runs/x/best"])
def test_mistyped_local_path_is_no_such_directory_not_a_hub_error(
    spec, tmp_path, monkeypatch, capsys
):
    """``models/x`` fits the hub's owner/name pattern; with a models/ folder here it is a
    path, and was reported as an unreachable hub id."""
    from whispertune.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "resolve", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no such directory: {spec}")
    assert "hub" not in err.split("(accepted")[0] and "Traceback" not in err
    if spec.startswith("models/"):
        assert "(models holds: tiny)" in err


def test_truncated_safetensors_is_named(tiny_hf, tmp_path, capsys):
    import shutil

    from whispertune.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_hf, model)
    weights = model / "model.safetensors"
    full = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(full // 2)
    assert main(["models", "resolve", str(model), "--hf"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {weights.resolve()}: truncated ({full // 2} of the {full} bytes its header "
        "describes); copy or download it again\n"
    )
    with open(weights, "r+b") as fh:  # cut inside the header itself
        fh.truncate(20)
    assert main(["models", "resolve", str(model), "--hf"]) == 2
    assert "too short for its own header" in capsys.readouterr().err


def test_adapter_on_a_base_of_another_size_is_named(tiny_hf, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    from whispertune.cli import main

    other = save_tiny_whisper(tmp_path / "narrow", d_model=32, encoder_ffn_dim=64)
    peft_model = get_peft_model(
        WhisperForConditionalGeneration.from_pretrained(tiny_hf),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(other)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    output = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"error: {adapter.resolve()}: trained on a base model of another size" in err
    assert "takes width 64, the base's is 32" in err and "Traceback" not in err
    assert not output.exists()
    # the right base given explicitly: merged
    again = ["merge", "--adapter", str(adapter), "--output", str(output)]
    assert main([*again, "--base-model", str(tiny_hf)]) == 0
    assert (output / "model.safetensors").is_file()
