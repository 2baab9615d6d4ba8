"""The training loss made block by block over labelled positions is the cross-entropy of the
full logits, with the same gradients, without the batch's logits in memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from whispertune.train.loss import decoder_states_as_logits, projected_cross_entropy


def _batch(vocabulary: int = 300, width: int = 32):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(vocabulary, width, generator=generator, requires_grad=True)
    hidden = torch.randn(3, 11, width, generator=generator, requires_grad=True)
    labels = torch.randint(0, vocabulary, (3, 11), generator=generator)
    labels[0, 7:] = -100  # padding of shorter label rows
    labels[2, 3:] = -100
    return hidden, weight, labels


def _plain(hidden, weight, labels, smoothing, dtype):
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = F.linear(hidden, weight)
    return F.cross_entropy(
        logits.float().reshape(-1, weight.shape[0]),
        labels.reshape(-1),
        ignore_index=-100,
        label_smoothing=smoothing,
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_blocked_loss_is_the_cross_entropy_of_the_logits(smoothing, dtype):
    hidden, weight, labels = _batch()
    expected = _plain(hidden, weight, labels, smoothing, dtype)
    grads = torch.autograd.grad(expected * 0.5, (hidden, weight))  # 0.5: grad accumulation
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = projected_cross_entropy(hidden, weight, labels, smoothing, block_rows=4)
    got = torch.autograd.grad(loss * 0.5, (hidden, weight))
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, expected, rtol=1e-6)
    # bf16: the products are rounded to bf16 on both paths; the weight's gradient is summed
    # over blocks in float32 here, in one bf16 product there
    tol = 1e-6 if dtype is None else 1e-2
    for g, e in zip(got, grads, strict=True):
        assert torch.allclose(g, e, rtol=tol, atol=tol * e.abs().max())
    assert got[0][0, 7:].abs().max() == 0  # padding gets no gradient


def test_frozen_projection_gets_no_gradient():
    hidden, weight, labels = _batch()
    weight.requires_grad_(False)
    loss = projected_cross_entropy(hidden, weight, labels)
    (grad,) = torch.autograd.grad(loss, (hidden,))
    expected = torch.autograd.grad(_plain(hidden, weight, labels, 0.0, None), (hidden,))[0]
    assert torch.allclose(grad, expected, atol=1e-7)


def test_model_hands_over_decoder_states_only_within_the_block(tiny_model):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model).eval()
    features = torch.randn(2, 80, 3000)
    tokens = torch.randint(0, model.config.vocab_size, (2, 6))
    labels = tokens.clone()
    labels[1, 4:] = -100
    with torch.no_grad():
        logits = model(input_features=features, decoder_input_ids=tokens).logits
        with decoder_states_as_logits(model) as projection:
            states = model(input_features=features, decoder_input_ids=tokens).logits
        again = model(input_features=features, decoder_input_ids=tokens).logits
    assert projection is model.proj_out
    assert states.shape == (2, 6, model.config.d_model)
    assert torch.equal(again, logits)  # the model is itself again outside the block
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    got = projected_cross_entropy(states, projection.weight, labels)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_an_adapted_projection_keeps_the_plain_path(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=["proj_out"]))
    with decoder_states_as_logits(adapted) as projection:
        assert projection is None
