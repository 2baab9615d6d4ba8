"""Whisper's decoder as a scorer of many texts against one clip, for rescoring on the CPU.

Why not CTranslate2's ``align``, which scored candidates before: each call takes one copy of
the encoder output per text and projects it to cross-attention keys and values again (6
layers × 1500 frames, a fixed 0.07 s a text on 2 cores), recomputes the prefix every
candidate shares with the others, and normalizes over the text tokens only, so it cannot say
how probable it is that the text *ends* there (the end-of-text term had to come from scoring
each beam hypothesis again). Here the clip's keys and values are projected once and shared by
every text; a text that starts like one already scored, or like one before it in the same
pass, reuses that one's self-attention keys and values and computes only its own tail; and
each text gets its full-vocabulary log-probabilities, end of text included.

The weights are the model's own, read from the CTranslate2 directory the backend decodes
with: in bf16 with autocast's arithmetic where the backend's encoder runs in bf16, packed in
float16 (the checkpoint's own precision) with float32 arithmetic elsewhere (CTranslate2
computes in int8). Plain torch, no transformers: the decoder is six pre-norm blocks and the
scorer needs none of generate's machinery.
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
_LOGIT_ROWS = 8  # positions whose logits are taken to float32 at a time (see _compute)

# How far two scorings of the same tokens may differ, per precision (nats, a sequence's sum;
# rescoring's TokenScorer.noise). A pass stacks different positions, and the kernels sum in
# an order that depends on the shapes: in float16 (float32 arithmetic) that is float noise,
# under 3e-5 measured; in bf16 every product's output is rounded to 8 bits, so a last-bit
# difference upstream becomes one of a bf16 step: over 2,088 texts of the 56 AISHELL test
# clips, each scored whole in one pass and in starts of 2, 5 and 8 tokens, median 0.05, the
# largest 0.34 (2026-12-05). Texts closer than that are ties at this precision.
NOISE = {"float16": 1e-3, "float32": 1e-3, "bfloat16": 0.25}
# Rescoring's (first chunk, candidates a pass) where its defaults do not fit: a bf16 position
# costs little against a pass's fixed cost (streaming 97 MB of weights and the clip's keys and
# values), so fewer, fuller passes pay. On the 56 AISHELL test clips (Xeon with AMX, one core
# each, two such runs at once as evaluate's two workers are; min of 6): (4, 3) 292 passes,
# 4,722 positions; (8, 5) 194, 5,995, 8.7 CPU s (mean 10.0); (8, 8) 162, 6,929, 6.7 CPU s
# (mean 8.6); (12, 8) the same; (16, 10) 7.3 (mean 9.5). float16 keeps (4, 3): 16.4 CPU s
# alone, (8, 5) 17.8.
PASS_SHAPE = {"bfloat16": (8, 8)}


class _Linear:
    """``x @ weight.T + bias`` in the scorer's precision.

    ``"float16"``: the weight packed in float16 for fbgemm, float32 arithmetic. Why: scoring
    a text computes a few positions at a time, so each call streams every weight from memory
    for little arithmetic, and the time is the weights' size (the 51,865-word output
    projection is 106 MB in float32: 9-24 ms for one or two positions on one core here, 2.7
    ms packed in float16). The checkpoints' weights are float16 already, so nothing is lost
    (within 1e-5 of float32 on a whole decode). int8 was faster still, but quantizes
    activations per call, which made a position's score depend on the other positions of
    the call (up to 1.3 nats).
    ``"bfloat16"``: weights and inputs in bf16, the output bf16, as ``torch.autocast`` does
    (see DecoderScorer); the weight handed to oneDNN in its own layout, reordered once
    (``_mkldnn_packed``). ``"float32"``: plain float32 weights (a reference for tests).
    """

    def __init__(self, weight, bias, precision: str, keep_weight: bool = False) -> None:
        """``keep_weight``: keep the plain bf16 weight beside oneDNN's packed copy (the
        output projection's is also the embedding table)."""
        import torch

        self.precision = precision
        if precision == "float16":
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.float(), bias)
        elif precision == "bfloat16":
            self.weight = weight.to(torch.bfloat16)
            self.bias = None if bias is None else bias.to(torch.bfloat16)
            self.packed = _mkldnn_packed(self.weight)
            if self.packed is not None and not keep_weight:
                self.weight = None  # one copy of the weights, not two
        else:
            self.weight, self.bias = weight.float(), bias

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        if self.precision == "float16":
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        if self.precision == "bfloat16" and self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(
                x.to(torch.bfloat16), self.packed, self.bias, "none", [], ""
            )
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


def _mkldnn_packed(weight):
    """``weight`` (bf16) reordered once into oneDNN's blocked layout, or None where this
    torch has no oneDNN. Why: ``F.linear`` hands oneDNN the plain weight and it reorders it
    on every call; for the 51,865-word output projection at the ~50 positions of a pass that
    was half the call (19 ms against 10 on one core, Xeon with AMX). The products are the
    same kernel's, bit for bit. The op is the one torch's own compiler uses for frozen bf16
    linears on the CPU."""
    import torch

    try:
        if not torch.backends.mkldnn.is_available():
            return None
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        probe = torch.zeros(1, weight.shape[1], dtype=torch.bfloat16)
        torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):
        return None
    return packed


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
    cross_out: _Linear
    cross_norm: tuple
    fc1: _Linear
    fc2: _Linear
    ffn_norm: tuple


@dataclass
class _Scored:
    """Positions computed for a clip: what a later request with the same start reuses.

    ``tokens`` are the tokens at the computed positions (prompt included); the output at
    position ``j`` gave ``next_logprob[j]``, the log-probability of ``tokens[j + 1]``, and the
    last position's of ``follows``: the sequence's next token where only its start was asked
    for, the end of text where all of it was."""

    tokens: tuple[int, ...]
    follows: int
    # Per layer: self-attention keys and values [1, heads, n, head_dim] of its own positions
    # only, ``start`` to ``len(tokens)``; the first ``start`` are ``base``'s. Why: a long
    # candidate is scored a few positions at a time, and each part holding every position
    # before it too kept 1.3 GB of copies for one 30 s window of long-form rescoring.
    keys: list
    values: list
    next_logprob: np.ndarray  # [T]
    base: _Scored | None = None
    start: int = 0

    def valid_for(self, full: tuple[int, ...], eot: int) -> int:
        """How many of ``next_logprob``'s leading terms are those of sequence ``full``."""
        return _valid_terms(self.tokens, self.follows, full, eot)


def _chain(node: _Scored | _Request | None, layer: int, end: int) -> tuple[list, list]:
    """Layer ``layer``'s keys and values of the first ``end`` positions, read along a base
    chain: each node holds its own positions (``start`` on) and its base the ones before.
    A request of the pass being computed holds those of the layers computed so far."""
    keys, values = [], []
    while node is not None and end > 0:
        if end > node.start:
            keys.append(node.keys[layer][:, :, : end - node.start])
            values.append(node.values[layer][:, :, : end - node.start])
            end = node.start
        node = node.base
    return keys[::-1], values[::-1]


def _valid_terms(tokens: tuple[int, ...], follows: int, full: tuple[int, ...], eot: int) -> int:
    """How many leading terms positions computed for ``tokens`` (whose last output scored
    ``follows``) give sequence ``full``: all of the shared start but its last, whose output
    predicted this sequence's next token only if the two go on alike."""
    k = shared_start(tokens, full)
    if k == len(tokens) and follows == (full[k] if k < len(full) else eot):
        return k
    return max(0, k - 1)


@dataclass
class _Request:
    """One sequence's positions ``start`` to ``end`` (exclusive) to compute in a batch, on
    top of the keys and values of ``base``'s first ``start`` positions: positions computed
    before, or another request of the same pass (earlier in it), whose keys and values each
    layer then reads as the pass computes them."""

    full: tuple[int, ...]
    end: int
    base: _Scored | _Request | None
    start: int
    follows: int  # the token the last position's output scores (see _Scored)
    # per layer, as the pass computes them: keys and values of its own positions
    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def valid_for(self, full: tuple[int, ...], eot: int) -> int:
        return _valid_terms(self.full[: self.end], self.follows, full, eot)


@dataclass
class ClipScores:
    """The per-clip state: cross-attention keys/values and the sequences scored so far."""

    cross: list  # per layer: (keys, values) [1, heads, frames, head_dim]
    scored: list[_Scored] = field(default_factory=list)


class DecoderScorer:
    """Log-probabilities of token sequences given one clip's encoder output."""

    def __init__(self, ct2_dir: str | Path, eot: int, precision: str = "float16") -> None:
        """``precision``: ``"float16"`` (weights packed in float16, float32 arithmetic), or
        ``"bfloat16"`` where the backend's encoder runs in bf16 (backends/bf16_encoder.py):
        the arithmetic of ``torch.autocast(bfloat16)``, as that encoder's. Matrix products
        and attention in bf16 (the clip's cross-attention keys and values and each text's
        self-attention cache kept in bf16), the residual stream, the layer norms and the
        log-softmax in float32 (over the logits as bf16 gives them, so every term is still a
        log-probability <= 0, which the prefix bound needs).

        Why bf16 where the CPU has it: a pass's time is its matrix products, and oneDNN's
        bf16 kernels (AMX, AVX512-BF16) do several times float32's arithmetic a cycle; the
        weights stream from memory in 2 bytes either way. On a Xeon with AMX, one core,
        the 56 AISHELL test clips' rescoring took 15.3 CPU s in float16, 7.2 in bf16 (the
        same pass shape: 6.2 with this module's later changes), with the same CER
        (docs/benchmarks.md). Its cost: a text's terms move with the pass that computes
        them, by up to NOISE (the bf16 rounding of every product turns the kernels'
        shape-dependent last bits into bf16 steps), which rescoring's bound allows for."""
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

        def cat(names: Sequence[str]) -> _Linear:
            """Linear layers fused into one (Whisper's key projections have no bias)."""
            w = torch.cat([t(f"{n}.weight") for n in names])
            d = w.shape[1]
            b = torch.cat([t(f"{n}.bias") if f"{n}.bias" in sd else torch.zeros(d) for n in names])
            return _Linear(w, b, precision)

        self.d_model = shape["d_model"]
        self.heads = shape["decoder_attention_heads"]
        self.eot = eot
        embed = t("model.decoder.embed_tokens.weight")
        # tied to the embedding, as in Whisper
        self.output = _Linear(embed, None, precision, keep_weight=True)
        # rows read as float32; in bf16 the output projection's copy (one table, not two)
        if precision == "float16":
            self.embed = embed.half()
        elif precision == "bfloat16":
            self.embed = self.output.weight
        else:
            self.embed = embed
        # what the matrix products and attention take: the scorer's keys and values are kept
        # in it
        self.dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.positions = t("model.decoder.embed_positions.weight")
        self.final_norm = norm("model.decoder.layer_norm")
        n_layers = shape["decoder_layers"]
        # every layer's cross-attention keys and values, one product a clip: one weight read
        # and one large matrix product (13 ms a clip in bf16, 28 ms as six)
        self.cross_kv = cat(
            [
                f"model.decoder.layers.{i}.encoder_attn.{n}"
                for i in range(n_layers)
                for n in ("k_proj", "v_proj")
            ]
        )
        self.layers = []
        for i in range(n_layers):
            p = f"model.decoder.layers.{i}"
            self.layers.append(
                _Layer(
                    self_qkv=cat([f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")]),
                    self_out=lin(f"{p}.self_attn.out_proj"),
                    self_norm=norm(f"{p}.self_attn_layer_norm"),
                    cross_q=lin(f"{p}.encoder_attn.q_proj"),
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
        frames = enc.shape[0]
        with torch.inference_mode():
            kv = self.cross_kv(enc.to(self.dtype))  # [frames, layers * 2 * d_model]
            # [layers, keys/values, heads, frames, head_dim], a view where the product left
            # them: attention takes any stride but the last, with the same bits. Copied into a
            # contiguous block per layer, the copy (18 MB a clip, transposed) cost more than
            # attention gained by it: the 56 AISHELL test clips' scoring 8.7 -> 7.4 CPU s
            kv = kv.view(frames, len(self.layers), 2, self.heads, -1).permute(1, 2, 3, 0, 4)
        return ClipScores([(kv[i, 0][None], kv[i, 1][None]) for i in range(len(self.layers))])

    def logprobs(
        self,
        state: ClipScores,
        prompt: Sequence[int],
        sequences: Sequence[Sequence[int]],
        limits: Sequence[int | None] | None = None,
    ) -> list[np.ndarray]:
        """For each sequence after ``prompt``: the log-probability of each of its tokens, then
        of the end of text after it (``len(sequence) + 1`` values, float32).

        ``limits``: per sequence, how many of those leading terms are wanted (None: all).
        Rescoring asks for the start of a candidate first and stops when that already shows
        it cannot win; the positions computed are kept, so asking for more later costs only
        the rest. All the sequences of a call share one pass through the decoder: its time
        at a few positions is streaming the weights and the clip's keys and values, once
        per call whatever the number of sequences in it."""
        limits = list(limits) if limits is not None else [None] * len(sequences)
        wanted = []
        for seq, limit in zip(sequences, limits, strict=True):
            full = (*prompt, *seq)
            if len(full) > self.positions.shape[0]:
                raise ValueError(
                    f"{len(full)} tokens: more than the decoder's {self.positions.shape[0]}"
                )
            terms = len(seq) + 1 if limit is None else min(len(seq) + 1, max(1, limit))
            wanted.append((full, len(prompt) - 1 + terms))
        # in the order asked: a sequence that starts like one planned before it in this call
        # computes only its own part, on the other's keys and values of this same pass
        plans: dict[tuple, _Request] = {}
        for full, end in wanted:
            if (full, end) in plans or self._known(state, full, end) is not None:
                continue
            if any(r.valid_for(full, self.eot) >= end for r in plans.values()):
                continue  # what a request of this pass computes gives it
            plans[(full, end)] = self._plan(state, full, end, list(plans.values()))
        if plans:
            self._compute(state, list(plans.values()))
        out = []
        for full, end in wanted:
            known = self._known(state, full, end)
            assert known is not None
            out.append(known[len(prompt) - 1 :].copy())
        return out

    def _known(self, state: ClipScores, full: tuple[int, ...], end: int) -> np.ndarray | None:
        """The first ``end`` terms of ``full``, if positions already computed give them."""
        for s in state.scored:
            if s.valid_for(full, self.eot) >= end:
                return s.next_logprob[:end]
        return None

    def _plan(
        self, state: ClipScores, full: tuple[int, ...], end: int, pending: list[_Request]
    ) -> _Request:
        """Reuse the positions, computed or planned in this pass, that give the most of
        ``full``'s leading terms."""
        base, start = None, 0
        for s in (*state.scored, *pending):
            v = s.valid_for(full, self.eot)
            if v > start:
                base, start = s, v
        return _Request(full, end, base, start, self._follows(full, end))

    def _compute(self, state: ClipScores, requests: list[_Request]) -> None:
        """One decoder pass over every request's new positions, stacked: the linear layers
        and the cross-attention see them all at once, the self-attention each request's own
        (its base's cached positions, then its new ones, causal)."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            rows = []
            for r in requests:
                ids = torch.tensor(r.full[r.start : r.end], dtype=torch.long)
                rows.append(self.embed[ids].float() + self.positions[r.start : r.end])
            x = torch.cat(rows)
            sizes = [r.end - r.start for r in requests]
            for i, layer in enumerate(self.layers):
                x = self._block(layer, x, requests, sizes, i, state.cross[i])
            x = F.layer_norm(x, (self.d_model,), *self.final_norm, eps=_EPS)
            logits = self.output(x)
            following = torch.tensor(
                [
                    t
                    for r in requests
                    for t in (*r.full[r.start + 1 : r.end], self._follows(r.full, r.end))
                ],
                dtype=torch.long,
            )
            # log-softmax at the tokens that follow only: <= 0 still (logsumexp >= the max),
            # in float32 a block of rows at a time: a first pass of 200 positions would
            # otherwise hold three float32 copies of its logits (40 MB each, per worker), and
            # 8 rows (1.7 MB) stay in the core's cache through logsumexp's passes (32 rows:
            # 6.1 ms for 52 positions, 8 rows: 5.4, one core)
            tails = []
            for rows, ids in zip(
                logits.split(_LOGIT_ROWS), following.split(_LOGIT_ROWS), strict=True
            ):
                rows = rows.float()
                picked = rows.gather(1, ids[:, None])[:, 0]
                tails.append((picked - torch.logsumexp(rows, dim=-1)).numpy())
            tails = np.concatenate(tails)
        offset = 0
        made: dict[int, _Scored] = {}  # a request of this pass → what it became
        for r, n in zip(requests, sizes, strict=True):
            base = made[id(r.base)] if isinstance(r.base, _Request) else r.base
            head = base.next_logprob[: r.start] if base is not None else np.empty(0)
            tail = tails[offset : offset + n]
            offset += n
            made[id(r)] = _Scored(
                r.full[: r.end],
                r.follows,
                r.keys,
                r.values,
                np.concatenate([head, tail]).astype(np.float32),
                base if r.start else None,
                r.start,
            )
            state.scored.append(made[id(r)])

    def _follows(self, full: tuple[int, ...], end: int) -> int:
        return full[end] if end < len(full) else self.eot

    def _block(self, layer: _Layer, x, requests, sizes, i: int, cross):
        """One pre-norm decoder block over the stacked new positions ``x`` ([n, d]); each
        request's keys and values of layer ``i`` at its new positions are appended to its
        own (before them, its base's chain is read)."""
        import torch
        import torch.nn.functional as F

        d = self.d_model
        h = F.layer_norm(x, (d,), *layer.self_norm, eps=_EPS)
        q_all, k_all, v_all = layer.self_qkv(h).split(d, dim=-1)
        attended = []
        offset = 0
        for r, n in zip(requests, sizes, strict=True):
            q = self._heads(q_all[offset : offset + n])
            k = self._heads(k_all[offset : offset + n])
            v = self._heads(v_all[offset : offset + n])
            offset += n
            r.keys.append(k)  # its own positions only (see _Scored)
            r.values.append(v)
            if r.start:
                before_k, before_v = _chain(r.base, i, r.start)
                k = torch.cat([*before_k, k], dim=2)
                v = torch.cat([*before_v, v], dim=2)
            # causal over the whole sequence: new position j sees positions <= start + j
            mask = torch.ones(n, r.start + n, dtype=torch.bool).tril(diagonal=r.start)
            attended.append(self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
        x = x + layer.self_out(torch.cat(attended) if len(attended) > 1 else attended[0])
        h = F.layer_norm(x, (d,), *layer.cross_norm, eps=_EPS)
        q = self._heads(layer.cross_q(h))
        a = F.scaled_dot_product_attention(q, *cross)
        x = x + layer.cross_out(self._merge(a))
        h = F.layer_norm(x, (d,), *layer.ffn_norm, eps=_EPS)
        return x + layer.fc2(F.gelu(layer.fc1(h)))

    def _heads(self, x):
        """[n, d] → [1, heads, n, head_dim]: with a batch dimension, torch's CPU attention
        takes its fused kernel (half the time of the 3-d call over 1500 frames)."""
        n = x.shape[0]
        return x.view(1, n, self.heads, -1).transpose(1, 2)

    def _merge(self, x):
        return x.transpose(1, 2).reshape(x.shape[2], -1)


_scorers: dict[tuple[str, int, str], DecoderScorer] = {}
_lock = threading.Lock()


def scorer_for(
    ct2_dir: str | Path, eot: int, threads: int, precision: str = "float16"
) -> DecoderScorer:
    """One scorer per model directory in a process (its weights: ~100 MB packed), built on
    first use: only Mandarin rescoring needs it. ``threads``: see lower_torch_threads."""
    key = (str(Path(ct2_dir).resolve()), eot, precision)
    with _lock:
        if key not in _scorers:
            logger.info("loading the decoder for rescoring from %s", ct2_dir)
            _scorers[key] = DecoderScorer(ct2_dir, eot, precision)
        lower_torch_threads(threads)
        return _scorers[key]


def lower_torch_threads(threads: int) -> None:
    """Lower torch's pool to ``threads``, never raise it.

    ``threads``: the cores each CTranslate2 worker decodes on. The workers run their parts of
    a batch through torch at the same time (the bf16 encoder, the rescoring's scorer): two
    workers each starting torch's default two threads on two cores took 10-15 % more CPU
    time. This is process-wide; where the CTranslate2 backend decodes, torch does only this
    work."""
    import torch

    if torch.get_num_threads() > threads:
        torch.set_num_threads(max(1, threads))
