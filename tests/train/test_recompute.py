"""The recomputed top encoder layers: a memory trade, not a change of the result; the
attention is kept, not run again, and the dropout masks are drawn again from their seeds."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from whispertune import options
from whispertune.train import TrainOptions
from whispertune.train.model import build_model, run_top_encoder, top_encoder
from whispertune.train.recompute import SeededDropout, keep_mask, use_seeded_dropouts


class _OpCounter(TorchDispatchMode):
    """Counts the ops that reach the kernels (a kept op's recomputation never does)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _model(tiny_model, method: str = "lora"):
    o = options.build(
        TrainOptions,
        {
            "model": str(tiny_model),
            "train": "t.jsonl",
            "output": "o",
            "lora_dropout": 0.3,
            "method": method,
        },
    )
    model = build_model(o, 10).model
    model.train()
    return model


def _step(model, hidden, ids, recompute: bool, dtype: torch.dtype, ops, seed: int = 0):
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        encoded = run_top_encoder(top_encoder(model), hidden, 2, recompute)
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), ids.ravel()
    )
    if ops is None:
        loss.backward()
    else:
        with ops:
            loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_recomputed_layers_give_the_gradients_of_keeping_everything(tiny_model, dtype):
    """Every activation kept, against only the layers' inputs, attention and projections
    (but fc1) kept and the rest recomputed: the same loss and LoRA gradients, bit for bit,
    in fp32 and under bf16 autocast (the masks drawn again from their seeds are the
    forward's); the backward pass runs no attention forward or kept projection again."""
    model = _model(tiny_model)
    layers = top_encoder(model).layers[-2:]
    assert use_seeded_dropouts(layers) == 12  # q, k, v, out, fc1, fc2 in each of 2 layers
    assert use_seeded_dropouts(layers) == 0  # swapped once
    hidden = torch.randn(2, 1500, 64)
    ids = torch.randint(0, 50000, (2, 12))
    kept_loss, kept = _step(model, hidden, ids, recompute=False, dtype=dtype, ops=None)
    backward = _OpCounter()
    recomputed_loss, recomputed = _step(
        model, hidden, ids, recompute=True, dtype=dtype, ops=backward
    )

    assert kept and kept.keys() == recomputed.keys()
    assert recomputed_loss == kept_loss
    for name, grad in kept.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=0, atol=0, msg=name)
    # kept: the attention and the projections but fc1 (biased ones are addmm: q, v, out,
    # fc1, fc2; the gradients are mm)
    assert backward.counts.get("_scaled_dot_product_flash_attention_for_cpu", 0) == 0
    assert backward.counts.get("addmm", 0) == 2, backward.counts  # fc1 in each layer
    # the rest of the layers' forward did run again: a real recomputation, masks included
    assert backward.counts.get("native_layer_norm", 0) == 4
    assert backward.counts.get("gelu", 0) == 2
    assert backward.counts.get("randint", 0) == 12
    # and the masks matter: another draw gives other gradients
    other = _step(model, hidden, ids, recompute=True, dtype=dtype, ops=None, seed=1)[1]
    assert any(not torch.equal(other[n], g) for n, g in kept.items())


def test_adalora_layers_recompute_their_projections(tiny_model):
    """AdaLoRA adds its branch to the base projection's output in place: that output is not
    kept (torch refuses a kept tensor changed in place), it runs again; the gradients are
    still those of keeping everything."""
    model = _model(tiny_model, "adalora")
    use_seeded_dropouts(top_encoder(model).layers[-2:])
    hidden = torch.randn(2, 1500, 64)
    ids = torch.randint(0, 50000, (2, 12))
    kept_loss, kept = _step(model, hidden, ids, False, torch.float32, None)
    backward = _OpCounter()
    loss, recomputed = _step(model, hidden, ids, True, torch.float32, backward)
    assert loss == kept_loss and kept.keys() == recomputed.keys()
    for name, grad in kept.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=0, atol=0, msg=name)
    assert backward.counts.get("addmm", 0) > 2  # the projections ran again, not only fc1


def test_seeded_dropout_is_dropout():
    """Elements dropped at the rate asked, the others scaled by 1/keep, gradients through the
    same mask; the same mask from the same random state, another from the next; the identity
    in eval."""
    x = torch.randn(8, 300, 512, requires_grad=True)
    dropout = SeededDropout(0.1)
    torch.manual_seed(3)
    got = dropout(x)
    dropped = got == 0
    assert abs(dropped.float().mean().item() - 0.1) < 0.003  # 1.2 M draws: 0.1 +- 0.0003 sd
    scale = torch.ones(()).div_(0.9)  # F.dropout's scaled mask, rounded as it rounds it
    torch.testing.assert_close(got[~dropped], x.detach()[~dropped] * scale, rtol=0, atol=0)
    got.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, 1 / 0.9))
    torch.manual_seed(3)
    assert torch.equal(dropout(x) == 0, dropped)
    assert not torch.equal(dropout(x) == 0, dropped)
    assert dropout.eval()(x) is x


def test_keep_mask_draws_independent_bits():
    """No structure across the 16-bit lanes of a 64-bit draw or along the tensor: neighbours
    agree as often as independent draws would."""
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([1 << 22]), 0.5).float()
    assert abs(mask.mean().item() - 0.5) < 0.002
    for lag in (1, 2, 3, 4, 5):  # 1-3: lanes of one word; 4: the same lane of the next word
        agree = (mask[lag:] == mask[:-lag]).float().mean().item()
        assert abs(agree - 0.5) < 0.002, lag
