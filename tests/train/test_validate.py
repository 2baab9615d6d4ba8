"""The trainer's validation keeps what the frozen encoder layers make of the eval clips from
its first pass, on disk: the later passes run only the trained layers, with the same
results."""

from __future__ import annotations

import torch

from tests.train.conftest import write_manifest
from whispertune import options
from whispertune.data.manifest import read_manifest
from whispertune.output_style import OutputStyle
from whispertune.train import TrainOptions
from whispertune.train.model import build_model, top_encoder
from whispertune.train.validate import FrozenEncoderPart, Validator


def _model(tiny_model):
    o = options.build(
        TrainOptions,
        {"model": str(tiny_model), "train": "t.jsonl", "output": "o", "encoder_layers": 1},
    )
    return o, build_model(o, 10)


def _perturb_trained_layer(encoder) -> None:
    with torch.no_grad():
        for name, p in encoder.layers[-1].named_parameters():
            if "lora_B" in name:
                p.add_(0.5)


def test_reused_frozen_part_gives_the_full_encoders_output(tiny_model, tmp_path):
    _, loaded = _model(tiny_model)
    encoder = top_encoder(loaded.model).eval()
    features = torch.randn(2, 80, 3000)
    frozen = FrozenEncoderPart(trained_layers=1, directory=tmp_path)
    with torch.inference_mode(), frozen.reusing(encoder):
        first = encoder(features).last_hidden_state
        again = encoder(features).last_hidden_state
        assert frozen.reused == 1 and len(frozen.kept) == 1
        assert frozen.size == 2 * 1500 * 64 * 4  # the input of the top layer, on disk
        assert list(tmp_path.iterdir()) == []  # in an unnamed file
        _perturb_trained_layer(encoder)  # training moved the top layer: it runs again
        moved = encoder(features).last_hidden_state
    assert "forward" not in vars(encoder)  # the encoder is itself again outside the block
    with torch.inference_mode():
        assert torch.equal(again, first)
        expected = encoder(features).last_hidden_state
    assert torch.equal(moved, expected) and not torch.equal(moved, first)


def test_later_validations_skip_the_frozen_layers(tiny_model, tmp_path):
    o, loaded = _model(tiny_model)
    model = loaded.model.train()
    samples = read_manifest(write_manifest(tmp_path / "m.jsonl", 3))
    frozen = FrozenEncoderPart(trained_layers=1, directory=tmp_path / "scratch")
    reusing = Validator(loaded.processor, samples, o, "cer", "cpu", OutputStyle(), frozen)
    plain = Validator(loaded.processor, samples, o, "cer", "cpu", OutputStyle())
    bottom_runs = []
    top_encoder(model).layers[0].register_forward_hook(lambda *a: bottom_runs.append(1))
    first = reusing.score(model)
    computed = len(bottom_runs)
    assert computed > 0 and frozen.reused == 0
    second = reusing.score(model)
    assert len(bottom_runs) == computed and frozen.reused > 0  # the frozen layer never ran
    assert first == second == plain.score(model)
    assert model.training  # back in training mode


def test_nothing_is_kept_past_the_budget(tiny_model, tmp_path):
    _, loaded = _model(tiny_model)
    encoder = top_encoder(loaded.model).eval()
    frozen = FrozenEncoderPart(trained_layers=1, directory=tmp_path, budget=1_000_000)
    with torch.inference_mode(), frozen.reusing(encoder):
        small = torch.randn(1, 80, 3000)  # 384 kB kept
        big = torch.randn(2, 80, 3000)  # 768 kB more: over the budget
        encoder(small), encoder(big), encoder(small), encoder(big)
    assert len(frozen.kept) == 1 and frozen.reused == 1
    frozen.close()
    assert not frozen.kept and frozen.size == 0


def test_another_model_with_the_same_frozen_layers_reuses_them(tiny_model, tmp_path):
    """best/ as published is another model on the same frozen layers: it reuses what the
    model in training left, with the figure it gets alone."""
    o, loaded = _model(tiny_model)
    samples = read_manifest(write_manifest(tmp_path / "m.jsonl", 3))
    frozen = FrozenEncoderPart(trained_layers=1, directory=tmp_path / "scratch")
    reusing = Validator(loaded.processor, samples, o, "cer", "cpu", OutputStyle(), frozen)
    reusing.score(loaded.model)
    _, published = _model(tiny_model)
    _perturb_trained_layer(top_encoder(published.model))
    plain = Validator(published.processor, samples, o, "cer", "cpu", OutputStyle())
    expected = plain.score(published.model)
    reused = frozen.reused
    assert reusing.score(published.model) == expected
    assert frozen.reused > reused


def test_validation_encodes_in_the_training_precision(tiny_model):
    """Under bf16 the encoder's matmuls run in bf16 and the decoder gets float32; fp32 leaves
    the encoder as it is."""
    from whispertune.train.validate import encoder_precision

    _, loaded = _model(tiny_model)
    encoder = top_encoder(loaded.model).eval()
    features = torch.randn(1, 80, 3000)
    seen = []
    frozen_fc1 = encoder.layers[0].fc1  # a plain Linear: only the top layer has LoRA
    hook = frozen_fc1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.inference_mode():
        with encoder_precision(encoder, "bf16", "cpu"):
            out = encoder(features).last_hidden_state
        with encoder_precision(encoder, "fp32", "cpu"):
            plain = encoder(features).last_hidden_state
    hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert out.dtype == plain.dtype == torch.float32
    assert "forward" not in vars(encoder)
    torch.testing.assert_close(out, plain, rtol=0.05, atol=0.05)
    assert not torch.equal(out, plain)
