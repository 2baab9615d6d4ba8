"""Whisper's encoder in bfloat16 on CPUs with native bf16, for the CTranslate2 backend.

Why: the encoder is most of decoding a short clip (every clip is a padded 30 s window:
1500 frames through every layer), and CTranslate2 has no bf16 on the CPU: it runs the
encoder in int8. Where the CPU has bf16 matrix instructions (AVX512-BF16, AMX), torch's
oneDNN kernels run it in bf16, both faster and closer to float32 than int8. Measured on a
Xeon with AMX, one thread, one 30 s window of whisper-base: CTranslate2 int8 482-527 ms,
this 186-196 ms; root-mean-square distance of the output from CTranslate2's float32 encoder 0.072
for int8, 0.017 for this (docs/benchmarks.md). CTranslate2 still decodes (beam search on
the int8 decoder): ``generate`` takes an encoder output as well as features.

The arithmetic is what ``torch.autocast(bfloat16)`` does with the model: matrix products,
convolutions and attention in bf16 (weights cast once, here), the residual stream, the layer
norms and the positional embedding in float32. Plain torch, read from the CTranslate2
directory the backend decodes with, as the rescoring's decoder scorer is.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_EPS = 1e-5  # Whisper's layer norms


@dataclass
class _Layer:
    qkv: tuple  # (weight, bias) fused q, k, v; bf16
    out: tuple
    attn_norm: tuple  # (weight, bias), float32
    fc1: tuple
    fc2: tuple
    ffn_norm: tuple


class Bf16Encoder:
    """Encoder output ([clips, frames / 2, d_model], float32) from log-mel features."""

    def __init__(self, ct2_dir: str | Path) -> None:
        import torch

        from whispertune.models.ct2_import import ct2_to_state_dict, read_ct2_model

        _, variables = read_ct2_model(Path(ct2_dir) / "model.bin")
        sd, shape = ct2_to_state_dict(variables, sides=("encoder",))
        del variables

        def f32(name: str):
            return torch.from_numpy(np.ascontiguousarray(sd.pop(name)))

        def bf16(name: str):
            return f32(name).to(torch.bfloat16)

        def lin(prefix: str) -> tuple:
            return bf16(f"{prefix}.weight"), bf16(f"{prefix}.bias")

        def norm(prefix: str) -> tuple:
            return f32(f"{prefix}.weight"), f32(f"{prefix}.bias")

        p = "model.encoder"
        self.d_model = shape["d_model"]
        self.heads = shape["encoder_attention_heads"]
        self.conv1 = lin(f"{p}.conv1")
        self.conv2 = lin(f"{p}.conv2")
        self.positions = f32(f"{p}.embed_positions.weight")
        self.final_norm = norm(f"{p}.layer_norm")
        self.layers = []
        for i in range(shape["encoder_layers"]):
            a = f"{p}.layers.{i}.self_attn"
            d = self.d_model
            qkv_w = torch.cat([f32(f"{a}.{n}.weight") for n in ("q_proj", "k_proj", "v_proj")])
            qkv_b = torch.cat([f32(f"{a}.q_proj.bias"), torch.zeros(d), f32(f"{a}.v_proj.bias")])
            self.layers.append(
                _Layer(
                    qkv=(qkv_w.to(torch.bfloat16), qkv_b.to(torch.bfloat16)),
                    out=lin(f"{a}.out_proj"),
                    attn_norm=norm(f"{p}.layers.{i}.self_attn_layer_norm"),
                    fc1=lin(f"{p}.layers.{i}.fc1"),
                    fc2=lin(f"{p}.layers.{i}.fc2"),
                    ffn_norm=norm(f"{p}.layers.{i}.final_layer_norm"),
                )
            )

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """``features``: [clips, n_mels, 3000] float32, as CTranslate2's encoder takes them."""
        import torch
        import torch.nn.functional as F

        bf16 = torch.bfloat16
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(bf16)
            x = F.gelu(F.conv1d(x, *self.conv1, padding=1))
            x = F.gelu(F.conv1d(x, *self.conv2, stride=2, padding=1))
            x = x.transpose(1, 2).float() + self.positions[: x.shape[2]]
            n, t, d = x.shape
            for layer in self.layers:
                h = F.layer_norm(x, (d,), *layer.attn_norm, eps=_EPS).to(bf16)
                q, k, v = F.linear(h, *layer.qkv).view(n, t, 3, self.heads, -1).unbind(2)
                a = F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                )
                x.add_(F.linear(a.transpose(1, 2).reshape(n, t, d), *layer.out).float())
                h = F.layer_norm(x, (d,), *layer.ffn_norm, eps=_EPS).to(bf16)
                x.add_(F.linear(F.gelu(F.linear(h, *layer.fc1)), *layer.fc2).float())
            x = F.layer_norm(x, (d,), *self.final_norm, eps=_EPS)
            return x.numpy()


_encoders: dict[str, Bf16Encoder] = {}
_lock = threading.Lock()


def bf16_encoder_for(ct2_dir: str | Path, threads: int) -> Bf16Encoder:
    """One encoder per model directory in a process (its weights: ~40 MB in bf16).
    ``threads``: see decoder_scorer.lower_torch_threads."""
    from whispertune.backends.decoder_scorer import lower_torch_threads

    key = str(Path(ct2_dir).resolve())
    with _lock:
        lower_torch_threads(threads)
        if key not in _encoders:
            logger.info("loading the encoder in bf16 from %s", ct2_dir)
            _encoders[key] = Bf16Encoder(ct2_dir)
        return _encoders[key]
