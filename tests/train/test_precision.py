"""--precision auto: bf16 only where the hardware computes it natively (emulated bf16 is slower
than fp32), fp32 elsewhere; an explicit choice is kept."""

from __future__ import annotations

import torch

from whispertune import options
from whispertune.train import TrainOptions, hardware


def _precision(value: str) -> str:
    o = options.build(TrainOptions, {"train": "t.jsonl", "output": "o", "precision": value})
    return o.optim.resolved_precision()


def test_auto_follows_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert _precision("auto") == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert _precision("auto") == "fp32"
    assert _precision("bf16") == "bf16" and _precision("fp32") == "fp32"


def test_auto_is_the_default(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    o = options.build(TrainOptions, {"train": "t.jsonl", "output": "o"})
    assert o.optim.precision == "auto" and o.optim.resolved_precision() == "fp32"
