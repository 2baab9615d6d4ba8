"""The word model and the homophone candidates behind Mandarin rescoring (real jieba
dictionary, real pinyin); the decode itself is tested on real whisper-base in
tests/backends/test_rescoring.py."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from whispertune.rescoring import (
    TokenScorer,
    candidates,
    choose,
    homophone_variants,
    wants_rescoring,
    word_logprob,
)


def test_real_words_score_higher_than_their_homophones():
    assert word_logprob("他扬言要报复") > word_logprob("他洋盐要报复") + 5
    assert word_logprob("到一家珠宝店") > word_logprob("到一家煮饱店") + 5
    # script and punctuation do not count, numbers are scored as read
    assert word_logprob("後者接受採訪。") == word_logprob("后者接受采访")
    assert word_logprob("总共4000万") == word_logprob("总共四千万")
    assert word_logprob("") == 0.0


def test_variants_replace_one_run_by_a_same_sounding_word():
    variants = homophone_variants("他洋盐要报复")
    assert "他扬言要报复" in variants
    for v in variants:
        assert len(v) == len("他洋盐要报复") and v != "他洋盐要报复"
    # runs never cross punctuation or Latin letters, which stay where they are
    variants = homophone_variants("三洞楼、美洞楼前有T恤")
    assert variants
    for v in variants:
        assert v[3] == "、" and v.endswith("T恤"), v


def test_candidates_are_the_beam_in_simplified_script_then_variants():
    cands = candidates(["後者接受日本媒體採訪時表示", "后者接受日本媒体采访时表示", "他洋盐要报复"])
    texts = [c.text for c in cands]
    assert texts[:2] == ["后者接受日本媒体采访时表示", "他洋盐要报复"]
    assert [c.source for c in cands[:2]] == [0, 2]
    assert len(texts) == len(set(texts))
    assert "他扬言要报复" in texts[2:]


def test_choice_adds_the_word_model_to_the_acoustic_score():
    hyps = ["他洋盐要报复"]
    # the same acoustic score for every candidate: the word model decides
    assert choose(hyps, lambda texts: [0.0] * len(texts)).text == "他扬言要报复"
    # an acoustic model sure of its hypothesis keeps it
    sure = choose(hyps, lambda texts: [0.0 if t == "他洋盐要报复" else -100.0 for t in texts])
    assert sure.text == "他洋盐要报复" and sure.index == 0


def test_a_hypothesis_cut_short_pays_for_its_end():
    """With the beam's totals, a shorter hypothesis gets its own end-of-text term: here the
    beam found the full sentence far more probable, and the word model's preference for
    fewer words does not overturn that."""
    hyps = ["就好像看到一个地球在动一样", "就好像看到一个地球在动"]

    def acoustic(texts):  # log-probabilities of the text tokens, end of text left out
        return [-4.0 if t.endswith("一样") else -2.0 for t in texts]

    assert choose(hyps, acoustic, end_scores=[-4.5, -30.0]).text == hyps[0]


def test_only_mandarin_transcription_is_rescored():
    assert wants_rescoring(True, "zh", "transcribe")
    assert not wants_rescoring(True, "en", "transcribe")
    assert not wants_rescoring(True, "zh", "translate")
    assert not wants_rescoring(False, "zh", "transcribe")


def _causal_logprob(prefix: tuple[int, ...], token: int) -> float:
    """A stand-in decoder's log-probability of ``token`` after ``prefix``: deterministic,
    <= 0 and causal (it depends on the tokens before only), as the real decoder's is."""
    digest = hashlib.sha256(repr((prefix, token)).encode()).digest()
    return -int.from_bytes(digest[:4], "little") / 2**32 * 3.0


def _token_logprobs(text: str) -> np.ndarray:
    tokens = tuple(text.encode())  # several tokens per character, as BPE gives
    return np.array([_causal_logprob(tokens[:j], t) for j, t in enumerate(tokens)])


BEAMS = [
    ["他洋盐要报复", "他扬盐要报复", "他洋言要報復"],
    ["後者接受日本媒體採訪時表示", "后者接受日本媒体采访时表示", "后者接受日本媒体"],
    ["就好像看到一个地球在动一样", "就好像看到一个地球在动", "就好象看到一個地球在動一樣"],
    ["很可能是从我的作品拍生出来的", "很可能是從我的作品派生出來的"],
    ["市政府进行了语论调查", "是政府进行了语论调查", "是政府進行了輿論調查。"],
]


@pytest.mark.parametrize("with_ends", [False, True])
def test_pruned_choice_is_the_exhaustive_choice(with_ends):
    """Scoring only the candidates whose bound can still win picks what scoring all of them
    picks, on real hypotheses (simplified and traditional, homophone errors, cut short), and
    scores fewer texts."""
    scored_all = scored_pruned = 0
    for k, hyps in enumerate(BEAMS):
        ends = [-1.0 - 0.7 * i - 0.01 * k for i in range(len(hyps))] if with_ends else None
        exhaustive = choose(hyps, lambda ts: [float(_token_logprobs(t).sum()) for t in ts], ends)
        whole = TokenScorer(
            lambda ts, limits: [_token_logprobs(t) for t in ts], str.encode, end_term=False
        )
        pruned = choose(hyps, whole, ends)
        assert (pruned.text, pruned.index) == (exhaustive.text, exhaustive.index)
        scored_all += exhaustive.scored
        scored_pruned += pruned.scored
    assert scored_pruned < scored_all


def _score_by_kind(growth: int, monkeypatch) -> tuple[dict, dict, list]:
    """Terms computed and scorer calls, whole candidates one by one against starts first
    (the chunk growing by ``growth`` each time), over the test beams; and each beam's
    exhaustive, whole and by-starts choices."""
    from whispertune import rescoring

    monkeypatch.setattr(rescoring, "GROWTH", growth)
    computed = {"prefixes": 0, "whole": 0}
    calls = {"prefixes": 0, "whole": 0}

    def scorer(kind: str) -> TokenScorer:
        known: dict[str, int] = {}  # terms computed so far per text (the rest is new work)

        def logprobs(texts, limits):
            calls[kind] += 1
            out = []
            for t, limit in zip(texts, limits, strict=True):
                terms = _token_logprobs(t)
                if kind == "prefixes" and limit is not None:
                    assert known.get(t, 0) < limit < len(terms)
                    terms = terms[:limit]
                computed[kind] += len(terms) - known.get(t, 0)
                known[t] = len(terms)
                out.append(terms)
            return out

        return TokenScorer(logprobs, str.encode, prefixes=kind == "prefixes", end_term=False)

    choices = []
    for hyps in BEAMS:
        exhaustive = choose(hyps, lambda ts: [float(_token_logprobs(t).sum()) for t in ts])
        by_whole = choose(hyps, scorer("whole"))
        by_prefixes = choose(hyps, scorer("prefixes"))
        choices.append((exhaustive.index, by_whole.index, by_prefixes.index))
    return computed, calls, choices


def test_scoring_starts_first_picks_the_exhaustive_choice_for_fewer_terms(monkeypatch):
    """With a scorer of prefixes (the decoder scorer on the CPU), candidates are scored a
    few tokens at a time, several per call: the choice is the exhaustive one, and in fixed
    chunks fewer terms are computed than scoring whole candidates one by one; with the chunk
    doubling each time (the default), the same choices in fewer calls (a decoder pass has a
    fixed cost: streaming the weights)."""
    fixed, fixed_calls, choices = _score_by_kind(1, monkeypatch)
    assert all(a == b == c for a, b, c in choices)
    assert fixed["prefixes"] < fixed["whole"], fixed
    growing, growing_calls, choices_growing = _score_by_kind(2, monkeypatch)
    assert choices_growing == choices
    assert growing_calls["prefixes"] < fixed_calls["prefixes"], (growing_calls, fixed_calls)


def test_a_scorer_whose_scores_move_with_the_pass_chooses_within_its_noise():
    """In bf16 a text's terms move with the pass that computes them (decoder_scorer.NOISE);
    the scorer declares how far, and the pruned choice then loses to the exhaustive one by
    no more than twice that (each side may be off by it), never by a candidate dropped on a
    bound its noise could have lifted."""
    noise = 0.2
    calls = []

    def logprobs(texts, limits):
        calls.append(texts)
        rng = np.random.default_rng(len(calls))
        out = []
        for t, limit in zip(texts, limits, strict=True):
            terms = _token_logprobs(t)
            # a shift of at most noise / 2 over the whole text, spread over its terms
            moved = terms + rng.uniform(-noise / 2, noise / 2) / len(terms)
            out.append(np.minimum(moved, 0.0)[:limit])
        return out

    def exact_total(text):
        from whispertune.rescoring import LM_WEIGHT, word_score

        return float(_token_logprobs(text).sum()) + LM_WEIGHT * word_score(text)

    scored = {noise: 0, 1e-3: 0}
    for shape in ((4, 3), (8, 8)):
        for hyps in BEAMS:
            exhaustive = choose(hyps, lambda ts: [float(_token_logprobs(t).sum()) for t in ts])
            for declared in scored:
                scorer = TokenScorer(logprobs, str.encode, True, False, noise=declared, shape=shape)
                pruned = choose(hyps, scorer)
                scored[declared] += pruned.scored
                if declared == noise:
                    loss = exact_total(exhaustive.text) - exact_total(pruned.text)
                    assert 0.0 <= loss <= 2 * noise, (hyps, pruned.text, exhaustive.text, loss)
    # the declared noise keeps more candidates in play than float noise would
    assert scored[noise] > scored[1e-3], scored
