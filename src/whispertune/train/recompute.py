"""What the trained top encoder layers keep for the backward pass, and what they run again.

Why: the default recipe recomputes each trained encoder layer in backward (a layer keeps only
its input, not ~0.6 GB of activations at batch 8 x 30 s windows; issue 26). Some parts of a
layer cost far more to run again than to keep, or than the rest:

- The attention's forward (its output and log-sum-exp, 25 MB a layer) and the projections
  but fc1 (:func:`_projection`): kept, with torch's selective activation checkpointing; the
  recomputation runs the norms, fc1, the GELU and the LoRA branches.
- The LoRA dropout masks. Where MKL does not draw them (any non-Intel CPU), torch draws
  Bernoulli numbers one at a time, about 200 M a second: 1.2 s of a 9 s step of
  whisper-base, twice that when drawn again. :class:`SeededDropout` draws each mask from one
  seed taken from torch's generator with numpy's SFC64, 16 bits an element: 7x faster, and
  the recomputation draws the same mask again from the same seed (checkpointing restores
  torch's random state), cheaper than keeping it (55 MB a layer).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

_aten = torch.ops.aten
_KEPT_OPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}
_LANES = 1 << 16  # a mask element is a 16-bit draw: p resolved to 1/65536


def keep_mask(shape: torch.Size, keep: float) -> torch.Tensor:
    """A boolean tensor, each element true with probability ``keep`` (to 1/65536), drawn
    from one seed of torch's CPU generator: ``torch.manual_seed`` and a restored random state
    give the same mask."""
    count = int(np.prod(shape))
    seed = int(torch.randint(0, 1 << 62, (), dtype=torch.int64))
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)  # 4 draws a 64-bit word
    mask = words.view(np.uint16)[:count] < round(keep * _LANES)
    return torch.from_numpy(mask).view(shape)


class SeededDropout(nn.Module):
    """``nn.Dropout`` for CPU training with its mask from :func:`keep_mask`, applied and
    scaled as ``F.dropout`` applies a mask; elsewhere (GPUs draw masks in fused kernels) it is
    ``F.dropout``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        keep = 1 - self.p
        return x * keep_mask(x.shape, keep).to(x.dtype).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_seeded_dropouts(layers: nn.Module) -> int:
    """Swap the LoRA dropouts under ``layers`` for :class:`SeededDropout`; how many."""
    swapped = 0
    for module in layers.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[name] = SeededDropout(dropout.p)
                swapped += 1
    return swapped


def _adds_out_of_place(layer: nn.Module) -> bool:
    """Whether every adapter of ``layer`` adds its branch to a new tensor, as peft's plain LoRA
    does. AdaLoRA adds to the base projection's output in place, and LoRA variants (DoRA)
    may: a kept output changed in place is not what backward needs (torch refuses it)."""
    from peft.tuners.lora.layer import Linear, LoraLayer

    return not any(
        isinstance(m, LoraLayer) and (type(m) is not Linear or getattr(m, "lora_variant", None))
        for m in layer.modules()
    )


def _policy(width: int, ctx, func, *args, **kwargs) -> CheckpointPolicy:
    if func in _KEPT_OPS or (width and _projection(func, args, width)):
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _projection(func, args, width: int) -> bool:
    """A base projection of a ``width``-wide (d_model) layer no wider out than in: q, k, v,
    out and fc2, not fc1 (4x wider out) nor a LoRA factor (rank-wide in or out).

    Why these: backward reads q, k and v again, and out and fc2 lie between the ops the
    recomputation must reach; kept, a step of the default recipe runs 0.7 s (8 %) faster for
    12 MB each a layer (bf16, batch 8 x 1500 frames). fc1's output is 4x that for one more
    matmul's time: measured, it gained 0.15 s for another 0.25 GB, so it runs again."""
    if func is _aten.mm.default:
        inputs, weight = args[0], args[1]
    elif func is _aten.addmm.default:
        inputs, weight = args[1], args[2]
    else:
        return False
    return inputs.shape[-1] >= weight.shape[-1] >= width


def recomputed(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``layer(hidden, None)``, keeping for backward its input, its attention's forward and
    the outputs of its q, k, v, out and fc2 projections (where its adapters allow it); the
    norms, fc1, the GELU and the LoRA branches (a :class:`SeededDropout`'s mask too) run
    again in backward."""
    width = hidden.shape[-1] if _adds_out_of_place(layer) else 0  # 0: no projection kept
    contexts = partial(create_selective_checkpoint_contexts, partial(_policy, width))
    return checkpoint(layer, hidden, None, use_reentrant=False, context_fn=contexts)
