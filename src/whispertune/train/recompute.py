"""What the trained top encoder layers keep for the backward pass, and what they run again.

Why: the default recipe recomputes each trained encoder layer in backward (a layer keeps only
its input, not ~0.6 GB of activations at batch 8 x 30 s windows; issue 26). Two parts of a
layer cost far more to run again than to keep:

- The LoRA dropout masks. Where MKL does not draw them (any non-Intel CPU), torch draws
  Bernoulli numbers one at a time, about 200 M a second: drawing the masks again took 1.4 s
  of a 22 s step of whisper-base. Kept as booleans they are 1 byte an element, 55 MB a layer
  at batch 8 x 1500 frames (``F.dropout`` keeps a scaled copy in the input's dtype).
- The attention's forward (its output and log-sum-exp, 25 MB a layer): the recomputation
  then runs only the projections, the MLP and the norms.

Both are kept with torch's selective activation checkpointing. The masks are the ones the
forward drew, so the gradients stay those of keeping every activation, bit for bit.
"""

from __future__ import annotations

from functools import partial

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


class MaskDropout(nn.Module):
    """``nn.Dropout`` on the CPU with its mask drawn as booleans, which the recomputation
    keeps instead of drawing it again. The same numbers as ``F.dropout`` for the same random
    state (the same draws, scaled and applied the same way); elsewhere it is ``F.dropout``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":  # fused kernels there, cheap to run again
            return nn.functional.dropout(x, self.p, True)
        keep = 1 - self.p
        mask = torch.bernoulli(torch.empty_like(x, dtype=torch.bool), keep)
        return x * mask.to(x.dtype).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_dropout_masks(layers: nn.Module) -> int:
    """Swap the LoRA dropouts under ``layers`` for :class:`MaskDropout`; how many."""
    swapped = 0
    for module in layers.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[name] = MaskDropout(dropout.p)
                swapped += 1
    return swapped


def _policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    if func in _KEPT_OPS:
        return CheckpointPolicy.MUST_SAVE
    if func is _aten.bernoulli.p and args[0].dtype == torch.bool:  # a MaskDropout's mask
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_CONTEXTS = partial(create_selective_checkpoint_contexts, _policy)


def recomputed(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``layer(hidden, None)``, keeping for backward only its input, its attention's forward
    and its dropout masks; the rest runs again in backward."""
    return checkpoint(layer, hidden, None, use_reentrant=False, context_fn=_CONTEXTS)
