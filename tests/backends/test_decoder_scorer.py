"""The rescoring decoder (backends.decoder_scorer) gives the log-probabilities transformers'
Whisper gives, end of text included, whatever was scored before for the same clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whispertune.backends.decoder_scorer import NOISE, DecoderScorer

PROMPT = [50258, 50259, 50359, 50363]  # tokens of the tiny model's vocabulary (see tests.tiny)
ATOL_BF16 = 0.02  # the tiny model's logits are small: bf16 steps of them too


@pytest.fixture(scope="module")
def reference(tiny_ct2_dir):
    """The tiny model in transformers, its encoder output for a random clip, and a
    function giving log P(token | tokens before) at each position of a sequence."""
    from transformers import WhisperForConditionalGeneration

    hf = WhisperForConditionalGeneration.from_pretrained(tiny_ct2_dir.parent / "hf").eval()
    frames = hf.config.max_source_positions
    rng = np.random.default_rng(0)
    encoded = rng.standard_normal((frames, hf.config.d_model)).astype(np.float32)
    eot = hf.config.eos_token_id

    def logprobs(tokens: list[int]) -> np.ndarray:
        ids = torch.tensor([PROMPT + tokens])
        with torch.inference_mode():
            out = hf(decoder_input_ids=ids, encoder_outputs=(torch.from_numpy(encoded[None]),))
        lp = torch.log_softmax(out.logits[0].double(), -1)[len(PROMPT) - 1 :]
        return np.array([float(lp[i, t]) for i, t in enumerate(tokens + [eot])])

    return encoded, eot, logprobs


SEQUENCES = [
    [300, 301, 302, 303, 304, 305],
    [300, 301, 302],  # a strict prefix of the first
    [300, 301, 302, 303, 304, 305, 306, 307],  # the first, extended
    [300, 301, 402, 403, 304, 305],  # the first with a run replaced (a homophone variant)
    [900, 901],  # nothing in common
]


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_log_probabilities_are_transformers_whatever_was_scored_before(
    tiny_ct2_dir, reference, precision
):
    encoded, eot, want = reference
    scorer = DecoderScorer(tiny_ct2_dir, eot, precision=precision)
    # float16 packs the weights: exact for float16 checkpoints, near for this float32 one
    tol = 1e-4 if precision == "float32" else 1e-3
    expected = [want(s) for s in SEQUENCES]
    # all in one clip state, in two orders: later sequences reuse earlier ones' starts
    for order in (range(len(SEQUENCES)), reversed(range(len(SEQUENCES)))):
        state = scorer.clip(encoded)
        got = {i: scorer.logprobs(state, PROMPT, [SEQUENCES[i]])[0] for i in order}
        for i, seq in enumerate(SEQUENCES):
            assert got[i].shape == (len(seq) + 1,)  # every token, then the end of text
            np.testing.assert_allclose(got[i], expected[i], atol=tol)
    # and each alone, in a fresh state: the same values as when sharing
    for i, seq in enumerate(SEQUENCES):
        alone = scorer.logprobs(scorer.clip(encoded), PROMPT, [seq])[0]
        np.testing.assert_allclose(alone, got[i], atol=1e-4)


def test_a_sequence_scored_twice_is_computed_once(tiny_ct2_dir, reference):
    encoded, eot, _ = reference
    scorer = DecoderScorer(tiny_ct2_dir, eot)
    state = scorer.clip(encoded)
    first = scorer.logprobs(state, PROMPT, [SEQUENCES[0], SEQUENCES[0]])
    assert len(state.scored) == 1
    np.testing.assert_array_equal(first[0], first[1])


def test_too_long_a_sequence_is_refused(tiny_ct2_dir, reference):
    encoded, eot, _ = reference
    scorer = DecoderScorer(tiny_ct2_dir, eot)
    limit = scorer.positions.shape[0]
    with pytest.raises(ValueError, match="more than the decoder's"):
        scorer.logprobs(scorer.clip(encoded), PROMPT, [[300] * limit])


def test_without_fbgemm_it_scores_in_float32(tiny_ct2_dir, reference, monkeypatch):
    """ARM builds of torch have no packed float16 linear: the scorer falls back to float32."""
    from whispertune.backends import decoder_scorer

    encoded, eot, want = reference
    monkeypatch.setattr(decoder_scorer, "packed_float16_available", lambda: False)
    scorer = DecoderScorer(tiny_ct2_dir, eot)
    assert scorer.output.precision == "float32"
    got = scorer.logprobs(scorer.clip(encoded), PROMPT, [SEQUENCES[0]])[0]
    np.testing.assert_allclose(got, want(SEQUENCES[0]), atol=1e-4)


def test_starts_then_the_rest_give_the_whole_and_compute_only_what_is_asked(
    tiny_ct2_dir, reference
):
    """Rescoring asks for a candidate's first terms, then maybe the rest: each call
    computes only the positions not computed before, several sequences share a pass, and
    the terms are those of scoring each sequence whole."""
    encoded, eot, want = reference
    scorer = DecoderScorer(tiny_ct2_dir, eot, precision="float32")
    state = scorer.clip(encoded)
    first, variant = SEQUENCES[0], SEQUENCES[3]
    starts = scorer.logprobs(state, PROMPT, [first, variant], [2, 3])
    assert [len(s) for s in starts] == [2, 3]
    # the prompt (its last position predicts the first token) and the asked terms: one pass
    assert len(state.scored) == 2
    assert state.scored[0].tokens == (*PROMPT, *first[:1])
    assert state.scored[0].follows == first[1]  # its last position predicted the next token
    whole = scorer.logprobs(state, PROMPT, [first, variant])
    for got, seq in zip(whole, (first, variant), strict=True):
        np.testing.assert_allclose(got, want(seq), atol=1e-4)
    np.testing.assert_allclose(starts[0], whole[0][:2], atol=1e-6)
    np.testing.assert_allclose(starts[1], whole[1][:3], atol=1e-6)
    # the rest of `first` was computed from its fifth position on, not from the start
    rest = state.scored[2]
    assert len(rest.tokens) == len(PROMPT) + len(first)
    assert rest.follows == eot
    # asked again (whole or a start): nothing computed
    scorer.logprobs(state, PROMPT, [first, variant[:2]], [None, 1])
    assert len(state.scored) == 4


def test_in_bf16_scores_stay_near_and_within_the_noise_declared(tiny_ct2_dir, reference):
    """Where the backend's encoder runs in bf16 the scorer does too (autocast's arithmetic):
    near transformers' float32 scores, every term still a log-probability (<= 0, which the
    prefix bound needs), and a sequence scored beside others, alone, or a few positions at a
    time within the noise the scorer declares to rescoring (NOISE)."""
    encoded, eot, want = reference
    scorer = DecoderScorer(tiny_ct2_dir, eot, precision="bfloat16")
    assert scorer.layers[0].fc1.precision == "bfloat16" and scorer.output.precision == "bfloat16"
    state = scorer.clip(encoded)
    assert state.cross[0][0].dtype == torch.bfloat16  # the clip's keys and values, kept in bf16
    together = scorer.logprobs(state, PROMPT, SEQUENCES)
    for got, seq in zip(together, SEQUENCES, strict=True):
        assert (got <= 0).all()
        np.testing.assert_allclose(got, want(seq), atol=ATOL_BF16)
    for seq, whole in zip(SEQUENCES, together, strict=True):
        alone = scorer.logprobs(scorer.clip(encoded), PROMPT, [seq])[0]
        in_parts = scorer.clip(encoded)
        for limit in (1, 3, None):
            got = scorer.logprobs(in_parts, PROMPT, [seq], [limit])[0]
        for other in (alone, got):
            assert abs(float(other.sum()) - float(whole.sum())) <= NOISE["bfloat16"]


def test_in_bf16_weights_packed_for_onednn_score_as_the_plain_weights(
    tiny_ct2_dir, reference, monkeypatch
):
    """The bf16 linears take oneDNN's packed weights (reordered once, not per call): the
    same kernel, so the same scores to the bit as the plain weights; where torch has no
    oneDNN the plain weights are used."""
    from whispertune.backends import decoder_scorer

    encoded, eot, _ = reference
    packed = DecoderScorer(tiny_ct2_dir, eot, precision="bfloat16")
    if packed.output.packed is None:
        pytest.skip("this torch has no oneDNN bf16 linear")
    assert packed.layers[0].fc1.weight is None  # one copy of the weights, not two
    monkeypatch.setattr(decoder_scorer, "_mkldnn_packed", lambda weight: None)
    plain = DecoderScorer(tiny_ct2_dir, eot, precision="bfloat16")
    assert plain.output.packed is None
    a = packed.logprobs(packed.clip(encoded), PROMPT, SEQUENCES)
    b = plain.logprobs(plain.clip(encoded), PROMPT, SEQUENCES)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cross_keys_values_are_read_in_place_and_score_as_a_contiguous_copy(
    tiny_ct2_dir, reference, precision
):
    """A clip's keys and values are views of the one product that made them (no per-layer
    copy): attention reads them with the same bits as a contiguous copy of them."""
    from whispertune.backends.decoder_scorer import ClipScores

    encoded, eot, _ = reference
    scorer = DecoderScorer(tiny_ct2_dir, eot, precision=precision)
    state = scorer.clip(encoded)
    keys = state.cross[0][0]
    assert not keys.is_contiguous() and keys.stride(-1) == 1
    assert keys.untyped_storage().data_ptr() == state.cross[-1][1].untyped_storage().data_ptr()
    copied = ClipScores([(k.contiguous(), v.contiguous()) for k, v in state.cross])
    a = scorer.logprobs(state, PROMPT, SEQUENCES)
    b = scorer.logprobs(copied, PROMPT, SEQUENCES)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_sequence_scored_in_parts_keeps_each_position_once(tiny_ct2_dir, reference):
    """Long-form rescoring scores long candidates a few positions at a time: each part keeps
    the self-attention keys and values of its own positions and reads the rest from the part
    it continues, and the terms are those of scoring it whole."""
    encoded, eot, want = reference
    scorer = DecoderScorer(tiny_ct2_dir, eot, precision="float32")
    state = scorer.clip(encoded)
    seq = SEQUENCES[2]
    for limit in (2, 4, 6, None):
        got = scorer.logprobs(state, PROMPT, [seq], [limit])[0]
    np.testing.assert_allclose(got, want(seq), atol=1e-4)
    parts = state.scored
    assert len(parts) == 4 and parts[0].start == 0 and parts[0].base is None
    for before, part in zip(parts, parts[1:], strict=False):
        assert part.base is before and part.start > 0
    for part in parts:
        own = len(part.tokens) - part.start
        assert all(k.shape[2] == own for k in part.keys + part.values)
    assert sum(len(p.tokens) - p.start for p in parts) == len(PROMPT) + len(seq)


def test_sequences_of_one_call_share_their_starts_within_the_pass(tiny_ct2_dir, reference):
    """Rescoring's first pass asks for the beam's best whole and the other candidates'
    starts together: a sequence that starts like one before it in the call computes only its
    own part, on the other's keys and values of the same pass, and gets its terms."""
    encoded, eot, want = reference
    scorer = DecoderScorer(tiny_ct2_dir, eot, precision="float32")
    state = scorer.clip(encoded)
    first, variant, extended = SEQUENCES[0], SEQUENCES[3], SEQUENCES[2]
    passes = []
    compute = scorer._compute
    scorer._compute = lambda state, requests: (passes.append(requests), compute(state, requests))
    got = scorer.logprobs(state, PROMPT, [first, variant, extended])
    assert len(passes) == 1
    for terms, seq in zip(got, (first, variant, extended), strict=True):
        np.testing.assert_allclose(terms, want(seq), atol=1e-4)
    whole, own, longer = state.scored
    # the variant leaves `first` at its third token: its own positions from the second's
    # (whose output predicts the token that differs)
    assert own.base is whole and own.start == len(PROMPT) + 1
    # the extension has all of `first` but its end of text
    assert longer.base is whole and longer.start == len(PROMPT) + len(first) - 1
    assert sum(r.end - r.start for r in passes[0]) == len(state.scored[0].tokens) + (
        len(PROMPT) + len(variant) - own.start
    ) + (len(PROMPT) + len(extended) - longer.start)
