"""Whisper's decoder as a scorer of many texts against one clip, for rescoring on the CPU.

Why not CTranslate2's ``align``, which scored candidates before: each call takes one copy of
the encoder output per text and projects it to cross-attention keys and values again (6
layers × 1500 frames, a fixed 0.07 s a text on 2 cores), recomputes the prefix every
candidate shares with the others, and normalizes over the text tokens only, so it cannot say
how probable it is that the text *ends* there (the end-of-text term had to come from scoring
each beam hypothesis again). Here the clip's keys and values are projected once and shared by
every text; a text that starts like one already scored reuses that one's self-attention
cache and computes only its own tail; and each text gets its full-vocabulary
log-probabilities, end of text included.

The weights are the model's own, read from the CTranslate2 directory the backend decodes
with and packed in float16 (the checkpoint's own precision) with float32 arithmetic, where
CTranslate2 computes in int8. Plain torch, no transformers: the decoder is
six pre-norm blocks and the scorer needs none of generate's machinery.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whispertune.rescoring import shared_start

logger = logging.getLogger(__name__)

_EPS = 1e-5  # Whisper's layer norms


class _Linear:
    """``x @ weight.T + bias``, the weight packed in float16 for fbgemm.

    Why: scoring a text computes a few positions at a time, so each call streams every
    weight from memory for little arithmetic, and the time is the weights' size (the
    51,865-word output projection is 106 MB in float32: 9-24 ms for one or two positions on
    one core here, 2.7 ms packed in float16). The arithmetic stays float32 and the
    checkpoints' weights are float16 already, so nothing is lost (within 1e-5 of float32 on
    a whole decode). int8 was faster still, but quantizes activations per call, which made
    a position's score depend on the other positions of the call (up to 1.3 nats).
    ``precision="float32"`` keeps plain float32 weights (a reference for tests).
    """

    def __init__(self, weight, bias, precision: str) -> None:
        import torch

        self.precision = precision
        if precision == "float16":
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.float(), bias)
        else:
            self.weight, self.bias = weight.float(), bias

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        if self.precision == "float16":
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return F.linear(x, self.weight, self.bias)


def packed_float16_available() -> bool:
    """fbgemm (x86 builds of torch) has the packed float16 linear; ARM builds do not, and
    score in float32 instead (slower, the same scores)."""
    import torch

    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.zeros(1, 1), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.zeros(1, 1), packed)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


@dataclass
class _Layer:
    self_qkv: _Linear  # q, k, v fused (the key bias zero, as in Whisper)
    self_out: _Linear
    self_norm: tuple  # (weight, bias)
    cross_q: _Linear
    cross_kv: _Linear  # applied to the encoder output, once per clip
    cross_out: _Linear
    cross_norm: tuple
    fc1: _Linear
    fc2: _Linear
    ffn_norm: tuple


@dataclass
class _Scored:
    """One token sequence scored for a clip: what a later sequence with the same start reuses."""

    tokens: tuple[int, ...]
    keys: list  # per layer: self-attention keys [1, heads, T, head_dim]
    values: list
    next_logprob: np.ndarray  # [T]: log P(tokens[j + 1] | tokens[: j + 1]); last: end of text


@dataclass
class ClipScores:
    """The per-clip state: cross-attention keys/values and the sequences scored so far."""

    cross: list  # per layer: (keys, values) [1, heads, frames, head_dim]
    scored: list[_Scored] = field(default_factory=list)


class DecoderScorer:
    """Log-probabilities of token sequences given one clip's encoder output."""

    def __init__(self, ct2_dir: str | Path, eot: int, precision: str = "float16") -> None:
        import torch

        from whispertune.models.ct2_import import ct2_to_state_dict, read_ct2_model

        if precision == "float16" and not packed_float16_available():
            logger.info("fbgemm's float16 linear is not in this torch build: scoring in float32")
            precision = "float32"
        _, variables = read_ct2_model(Path(ct2_dir) / "model.bin")
        sd, shape = ct2_to_state_dict(variables, sides=("decoder",))

        def t(name: str):
            # taken out of the float32 state dict as it is packed, so that the peak is one
            # copy of the decoder, not two
            return torch.from_numpy(np.ascontiguousarray(sd.pop(name)))

        def norm(prefix: str) -> tuple:
            return (t(f"{prefix}.weight"), t(f"{prefix}.bias"))

        def lin(prefix: str) -> _Linear:
            bias = f"{prefix}.bias"
            weight = t(f"{prefix}.weight")
            return _Linear(weight, t(bias) if bias in sd else None, precision)

        def cat(prefix: str, names: Sequence[str]) -> _Linear:
            w = torch.cat([t(f"{prefix}.{n}.weight") for n in names])
            d = w.shape[1]
            b = torch.cat(
                [
                    t(f"{prefix}.{n}.bias") if f"{prefix}.{n}.bias" in sd else torch.zeros(d)
                    for n in names
                ]
            )
            return _Linear(w, b, precision)

        self.d_model = shape["d_model"]
        self.heads = shape["decoder_attention_heads"]
        self.eot = eot
        embed = t("model.decoder.embed_tokens.weight")
        self.output = _Linear(embed, None, precision)  # tied to the embedding, as in Whisper
        self.embed = embed.half() if precision == "float16" else embed  # rows read as float32
        self.positions = t("model.decoder.embed_positions.weight")
        self.final_norm = norm("model.decoder.layer_norm")
        self.layers = []
        for i in range(shape["decoder_layers"]):
            p = f"model.decoder.layers.{i}"
            self.layers.append(
                _Layer(
                    self_qkv=cat(f"{p}.self_attn", ("q_proj", "k_proj", "v_proj")),
                    self_out=lin(f"{p}.self_attn.out_proj"),
                    self_norm=norm(f"{p}.self_attn_layer_norm"),
                    cross_q=lin(f"{p}.encoder_attn.q_proj"),
                    cross_kv=cat(f"{p}.encoder_attn", ("k_proj", "v_proj")),
                    cross_out=lin(f"{p}.encoder_attn.out_proj"),
                    cross_norm=norm(f"{p}.encoder_attn_layer_norm"),
                    fc1=lin(f"{p}.fc1"),
                    fc2=lin(f"{p}.fc2"),
                    ffn_norm=norm(f"{p}.final_layer_norm"),
                )
            )

    # -- per clip ----------------------------------------------------------------------------

    def clip(self, encoder_output: np.ndarray) -> ClipScores:
        """Project one clip's encoder output ([frames, d_model]) to every layer's
        cross-attention keys and values, once for all the texts scored against it."""
        import torch

        enc = torch.from_numpy(np.ascontiguousarray(encoder_output, dtype=np.float32))
        cross = []
        with torch.inference_mode():
            for layer in self.layers:
                kv = layer.cross_kv(enc)
                k, v = kv.split(self.d_model, dim=-1)
                cross.append((self._heads(k).contiguous(), self._heads(v).contiguous()))
        return ClipScores(cross)

    def logprobs(
        self, state: ClipScores, prompt: Sequence[int], sequences: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """For each sequence after ``prompt``: the log-probability of each of its tokens, then
        of the end of text after it (``len(sequence) + 1`` values, float32)."""
        out = []
        for seq in sequences:
            full = (*prompt, *seq)
            if len(full) > self.positions.shape[0]:
                raise ValueError(
                    f"{len(full)} tokens: more than the decoder's {self.positions.shape[0]}"
                )
            scored = self._score(state, tuple(full))
            out.append(scored.next_logprob[len(prompt) - 1 :].copy())
        return out

    def _score(self, state: ClipScores, tokens: tuple[int, ...]) -> _Scored:
        import torch
        import torch.nn.functional as F

        # the scored sequence sharing the longest start with this one
        base, shared = None, 0
        for s in state.scored:
            k = shared_start(s.tokens, tokens)
            if k > shared:
                base, shared = s, k
        if base is not None and shared == len(tokens) == len(base.tokens):
            return base
        # From the last shared position on: its output predicts the first token that differs
        # (or the end of text), which the scored sequence's does not.
        start = shared - 1 if base is not None else 0
        with torch.inference_mode():
            ids = torch.tensor(tokens[start:], dtype=torch.long)
            x = self.embed[ids].float() + self.positions[start : len(tokens)]
            new_keys, new_values = [], []
            for i, layer in enumerate(self.layers):
                past = (base.keys[i][:, :, :start], base.values[i][:, :, :start]) if start else None
                x, k, v = self._block(layer, x, past, state.cross[i], start)
                new_keys.append(k)
                new_values.append(v)
            x = F.layer_norm(x, (self.d_model,), *self.final_norm, eps=_EPS)
            logits = self.output(x)
            logp = torch.log_softmax(logits, dim=-1)
            following = torch.tensor([*tokens[start + 1 :], self.eot], dtype=torch.long)
            tail = logp.gather(1, following[:, None])[:, 0].numpy()
        head = base.next_logprob[:start] if start else np.empty(0, dtype=np.float32)
        scored = _Scored(
            tokens,
            new_keys,
            new_values,
            np.concatenate([head, tail]).astype(np.float32),
        )
        state.scored.append(scored)
        return scored

    def _block(self, layer: _Layer, x, past, cross, start: int):
        """One pre-norm decoder block over the new positions ``x`` ([n, d]); ``past`` the
        self-attention keys/values of the ``start`` positions before them."""
        import torch
        import torch.nn.functional as F

        d = self.d_model
        h = F.layer_norm(x, (d,), *layer.self_norm, eps=_EPS)
        q, k, v = layer.self_qkv(h).split(d, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        n = q.shape[2]
        # causal over the whole sequence: new position j sees positions <= start + j
        mask = torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + layer.self_out(self._merge(a))
        h = F.layer_norm(x, (d,), *layer.cross_norm, eps=_EPS)
        q = self._heads(layer.cross_q(h))
        a = F.scaled_dot_product_attention(q, *cross)
        x = x + layer.cross_out(self._merge(a))
        h = F.layer_norm(x, (d,), *layer.ffn_norm, eps=_EPS)
        x = x + layer.fc2(F.gelu(layer.fc1(h)))
        return x, k, v

    def _heads(self, x):
        """[n, d] → [1, heads, n, head_dim]: with a batch dimension, torch's CPU attention
        takes its fused kernel (half the time of the 3-d call over 1500 frames)."""
        n = x.shape[0]
        return x.view(1, n, self.heads, -1).transpose(1, 2)

    def _merge(self, x):
        return x.transpose(1, 2).reshape(x.shape[2], -1)


_scorers: dict[tuple[str, int], DecoderScorer] = {}
_lock = threading.Lock()


def scorer_for(ct2_dir: str | Path, eot: int, threads: int) -> DecoderScorer:
    """One scorer per model directory in a process (its weights: ~100 MB packed), built on
    first use: only Mandarin rescoring needs it.

    ``threads``: the cores each CTranslate2 worker decodes on. The workers score their clips
    at the same time, so torch's own pool is lowered to that (never raised): two workers
    each starting torch's default two threads on two cores took 10-15 % more CPU time. This
    is process-wide; torch is not otherwise used where the CTranslate2 backend decodes."""
    import torch

    key = (str(Path(ct2_dir).resolve()), eot)
    with _lock:
        if key not in _scorers:
            logger.info("loading the decoder for rescoring from %s", ct2_dir)
            _scorers[key] = DecoderScorer(ct2_dir, eot)
        if torch.get_num_threads() > threads:
            torch.set_num_threads(max(1, threads))
        return _scorers[key]
