"""Batches round their label length up (a few matrix shapes a run) without changing the loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from whispertune.train.dataset import collate

SOT, PAD = 7, 9


def _item(length: int, index: int = 0) -> dict:
    return {
        "index": index,
        "labels": list(range(100, 100 + length)),
        "encoder_hidden": np.zeros((4, 2), np.float32),
    }


def test_labels_are_padded_to_the_multiple_within_the_limit():
    batch = collate([_item(5), _item(19, 1)], PAD, SOT, multiple=16)
    assert batch["labels"].shape == (2, 32)
    assert batch["labels"][0, 5:].eq(-100).all() and batch["labels"][1, 19:].eq(-100).all()
    assert batch["decoder_input_ids"][1, :20].tolist() == [SOT, *range(100, 118), PAD]
    assert batch["decoder_input_ids"][0, 5:].eq(PAD).all()
    assert collate([_item(19)], PAD, SOT, multiple=16, limit=24)["labels"].shape == (1, 24)
    # never shorter than the longest label, whatever the limit
    assert collate([_item(30)], PAD, SOT, multiple=16, limit=24)["labels"].shape == (1, 30)
    assert collate([_item(19)], PAD, SOT)["labels"].shape == (1, 19)


def test_padding_leaves_the_loss_as_it_was(tiny_model):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model).eval()
    items = [_item(5), _item(11, 1)]
    hidden = torch.randn(2, 1500, model.config.d_model)

    def loss(batch):
        logits = model(
            encoder_outputs=(hidden,), decoder_input_ids=batch["decoder_input_ids"]
        ).logits
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100
        )

    with torch.no_grad():
        exact = loss(collate(items, PAD, SOT))
        padded = loss(collate(items, PAD, SOT, multiple=16))
    assert torch.allclose(padded, exact, rtol=1e-5)
