"""The recomputed top encoder layers: a memory trade, not a change of the result, and the
parts that cost most to run again (dropout masks, attention) are kept, not run again."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from whispertune import options
from whispertune.train import TrainOptions
from whispertune.train.model import build_model, run_top_encoder, top_encoder
from whispertune.train.recompute import MaskDropout, keep_dropout_masks


class _OpCounter(TorchDispatchMode):
    """Counts the ops that reach the kernels (a kept op's recomputation never does)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _model(tiny_model):
    o = options.build(
        TrainOptions,
        {"model": str(tiny_model), "train": "t.jsonl", "output": "o", "lora_dropout": 0.3},
    )
    model = build_model(o, 10).model
    model.train()
    return model


def _step(model, hidden, ids, recompute: bool, dtype: torch.dtype, ops: _OpCounter | None):
    torch.manual_seed(0)
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
    """Peft's own dropout with every activation kept, against the masks kept and the rest
    recomputed: the same loss and LoRA gradients, bit for bit, in fp32 and under bf16
    autocast; the backward pass draws no mask and runs no attention forward again."""
    model = _model(tiny_model)
    hidden = torch.randn(2, 1500, 64)
    ids = torch.randint(0, 50000, (2, 12))
    kept_loss, kept = _step(model, hidden, ids, recompute=False, dtype=dtype, ops=None)

    layers = top_encoder(model).layers[-2:]
    assert keep_dropout_masks(layers) == 12  # q, k, v, out, fc1, fc2 in each of 2 layers
    assert keep_dropout_masks(layers) == 0  # swapped once
    backward = _OpCounter()
    recomputed_loss, recomputed = _step(
        model, hidden, ids, recompute=True, dtype=dtype, ops=backward
    )

    assert kept and kept.keys() == recomputed.keys()
    assert recomputed_loss == kept_loss
    for name, grad in kept.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=0, atol=0, msg=name)
    assert backward.counts.get("bernoulli", 0) == 0, backward.counts
    assert backward.counts.get("_scaled_dot_product_flash_attention_for_cpu", 0) == 0
    # the rest of the layers' forward did run again: a real recomputation
    assert backward.counts.get("addmm", 0) + backward.counts.get("mm", 0) > 0
    assert backward.counts.get("gelu", 0) == 2


def test_mask_dropout_is_dropout():
    """The same numbers as ``F.dropout`` from the same random state; the identity in eval."""
    x = torch.randn(4, 300, 32, requires_grad=True)
    torch.manual_seed(3)
    expected = torch.nn.functional.dropout(x, 0.1, True)
    dropout = MaskDropout(0.1)
    torch.manual_seed(3)
    got = dropout(x)
    assert torch.equal(got, expected)
    assert 0 < (got == 0).float().mean().item() < 0.2
    got.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(got == 0, 0.0, 1 / 0.9))
    assert dropout.eval()(x) is x
