"""The training loss over the vocabulary without the batch's logits in memory.

Why: Whisper's output projection turns each decoder position into 51,865 logits. In the
default recipe a batch of 8 joined windows has up to ~900 label positions, so the logits,
their float32 copy, the log-softmax and its gradient were four tensors of 90-190 MB each at
the step's peak, about half of what a step holds live. Their sizes change with every batch
(30 to 900 positions), so the allocator also kept the holes the large ones left (issue 26:
the heap grew from 1.85 to 2.2 GB over a run whose live peak was 1.3-1.5 GB).

Here the projection and the cross-entropy run over the labelled positions only (padding is
never projected), in blocks of :data:`BLOCK_ROWS` positions: each block's logits are made,
turned into its loss and its gradient with respect to the decoder output (and to the
projection weight where that is trained), and dropped. The backward pass then only scales
the kept gradient. The arithmetic is the one ``cross_entropy(logits.float(), ...)`` does on
the projection's output, in the same precision (the projection in autocast's dtype, the
softmax in float32), so the loss and gradients are those of the plain path up to float
rounding (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

IGNORE_INDEX = -100
BLOCK_ROWS = 256  # 256 x 51,865 float32 logits: 53 MB
# A block's rows are padded with zeros to a multiple of this: a new matrix shape costs
# memory for the rest of the run in bf16 on a CPU (see dataset.collate).
ROW_MULTIPLE = 32


def projects_plainly(projection: torch.nn.Module) -> bool:
    """Whether the output projection is a bare bias-free ``Linear`` (Whisper's tied one); any
    other (an adapter on it, a bias) keeps the plain path."""
    return type(projection) is torch.nn.Linear and projection.bias is None


@contextlib.contextmanager
def decoder_states_as_logits(model) -> Iterator[torch.nn.Module | None]:
    """Within this block ``model``'s forward returns the decoder's final hidden states in place
    of logits, and yields the projection to give :func:`projected_cross_entropy`; yields None
    (the model unchanged) where the projection is not plain. The forward still goes through
    ``model`` itself: under DDP that is what makes the gradients synchronise."""
    from whispertune.train.model import forward_wrapped

    projection = model.get_output_embeddings()
    if projection is None or not projects_plainly(projection):
        yield None
        return
    with forward_wrapped(projection, lambda computed: _identity):
        yield projection


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


def projected_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    block_rows: int = BLOCK_ROWS,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, labels, ignore_index=-100)`` (mean over labelled
    positions, with ``label_smoothing``), computed block by block (see the module docstring).
    ``hidden`` is (..., width) and ``labels`` the matching (...) token ids."""
    dtype = (
        torch.get_autocast_dtype(hidden.device.type)
        if torch.is_autocast_enabled(hidden.device.type)
        else hidden.dtype
    )
    mask = labels.reshape(-1) != IGNORE_INDEX
    rows = hidden.reshape(-1, hidden.shape[-1])[mask]
    targets = labels.reshape(-1)[mask]
    with torch.autocast(hidden.device.type, enabled=False):
        return _ProjectedCrossEntropy.apply(
            rows, weight, targets, float(label_smoothing), dtype, block_rows
        )


class _ProjectedCrossEntropy(torch.autograd.Function):
    """The loss and, in the same pass, its gradients; backward scales them."""

    @staticmethod
    def forward(ctx, rows, weight, targets, smoothing, dtype, block_rows):
        count = rows.shape[0]
        vocabulary = weight.shape[0]
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        want_rows = ctx.needs_input_grad[0]
        want_weight = ctx.needs_input_grad[1]
        grad_rows = torch.empty_like(rows) if want_rows else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if want_weight
            else None
        )
        for start in range(0, count, block_rows):
            block = slice(start, min(count, start + block_rows))
            n = block.stop - start
            x = rows[block].to(dtype)
            if n % ROW_MULTIPLE:  # zero rows up to a multiple: a few matrix shapes a run
                x = torch.nn.functional.pad(x, (0, 0, 0, ROW_MULTIPLE - n % ROW_MULTIPLE))
            t = targets[block]
            padded = (x @ w.T).float()
            logits = padded[:n]
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, t[:, None]).squeeze(1)
            nll = lse - picked
            if smoothing:
                uniform = lse - logits.mean(dim=-1)
                total += ((1 - smoothing) * nll + smoothing * uniform).sum()
            else:
                total += nll.sum()
            if not (want_rows or want_weight):
                continue
            # d(mean loss)/d(logits) = (softmax - (1 - e) onehot - e / V) / count
            grad = logits.sub_(lse[:, None]).exp_()
            if smoothing:
                grad.sub_(smoothing / vocabulary)
            grad.scatter_add_(1, t[:, None], torch.full_like(picked[:, None], -(1 - smoothing)))
            grad.div_(count)
            padded[n:] = 0  # the zero rows' logits: no gradient
            grad = padded.to(dtype)
            if want_rows:
                grad_rows[block] = (grad @ w)[:n].to(rows.dtype)
            if want_weight:
                grad_weight += (grad.T @ x).float()
        ctx.save_for_backward(grad_rows, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_rows, grad_weight = ctx.saved_tensors
        rows_out = grad_rows * grad_output.to(grad_rows.dtype) if grad_rows is not None else None
        weight_out = (
            (grad_weight * grad_output).to(ctx.weight_dtype) if grad_weight is not None else None
        )
        return rows_out, weight_out, None, None, None, None
