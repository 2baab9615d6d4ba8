"""The trainer's validation keeps what the frozen encoder layers make of the eval clips from
its first pass: the later passes run only the trained layers, with the same results."""

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


def test_reused_frozen_part_gives_the_full_encoders_output(tiny_model):
    _, loaded = _model(tiny_model)
    encoder = top_encoder(loaded.model).eval()
    features = torch.randn(2, 80, 3000)
    frozen = FrozenEncoderPart(trained_layers=1)
    with torch.inference_mode(), frozen.reusing(encoder):
        first = encoder(features).last_hidden_state
        again = encoder(features).last_hidden_state
        assert frozen.reused == 1 and len(frozen.kept) == 1
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
    frozen = FrozenEncoderPart(trained_layers=1)
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
