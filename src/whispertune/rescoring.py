"""Mandarin output rescored with a word-frequency language model and homophone alternatives.

Why: whisper-base's Mandarin errors are mostly homophones of the right words (``扬言`` →
``洋盐``, ``导游`` → ``岛由``): the sound is right, the word is one its small language model
does not know well. Fine-tuning on half an hour of speech cannot teach it that vocabulary (the
measurements are in docs/fine-tuning-recipe.md); a word list with frequencies from a large
corpus knows it. jieba ships one (349k words, counted on tens of millions of words of modern
Chinese), so this works offline and for any topic.

How: the beam's hypotheses, plus variants of the best two in which a run of 2–4 characters is
replaced by a dictionary word with the same toneless pinyin (the most frequent few per
sound), are scored by the acoustic model (Whisper's own log-probability of each candidate, by
forced decoding) plus the log-probability of their best segmentation into dictionary words;
the highest sum wins. Whisper still has the last word on what was said: a variant the audio
does not support loses on the acoustic score. Candidates are compared in simplified script
(the dictionary's), so rescored output is simplified Chinese.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from whispertune.lexicon import lexicon
from whispertune.numerals import arabic_to_hanzi
from whispertune.text import remove_punctuation, to_simplified

if TYPE_CHECKING:
    from whispertune.backends.base import ClipSegment, EncodedClip, Transcriber

logger = logging.getLogger(__name__)

# The language model's weight against Whisper's log-probability, its bonus per character
# (a unigram word model prefers fewer, longer words, so without it a hypothesis that drops
# a word wins), and how many homophone variants (the ones the word model likes best) the
# acoustic model scores per clip. Chosen on the training part of the AISHELL split with the
# base model (149 clips; docs/fine-tuning-recipe.md): CER 10.5 % as decoded, 8.95 % rescored
# without the bonus, 8.3 % with 5-8 per character; weights 0.5-1.3 within 0.6 points.
LM_WEIGHT = 1.0
CHAR_BONUS = 5.0
MAX_VARIANTS = 8
_VARIANTS_PER_SOUND = 3


def wants_rescoring(enabled: bool, language: str | None, task: str) -> bool:
    """Only Mandarin transcription has a word model here."""
    return enabled and language == "zh" and task == "transcribe"


def prepare_rescoring() -> None:
    """Load pypinyin and the word tables now (0.3 CPU s once per process; building the
    tables the first time on a machine takes ~15 s), for a backend that loads them while its
    first clips decode."""
    from pypinyin import lazy_pinyin

    lazy_pinyin("预备")
    lexicon()


@lru_cache(maxsize=4096)  # candidates are sorted by it, then scored with it
def word_logprob(text: str) -> float:
    """Natural log-probability of ``text`` under jieba's unigram word model (its best
    segmentation). Numbers are scored as read, so that ``4000万`` and ``四千万`` tie."""
    return lexicon().word_logprob(_comparable(text))


def word_score(text: str, char_bonus: float = CHAR_BONUS) -> float:
    """The word model's side of a candidate's total (before ``LM_WEIGHT``): its word
    log-probability plus ``char_bonus`` per character read."""
    return word_logprob(text) + char_bonus * len(_comparable(text))


def _comparable(text: str) -> str:
    """What the word model reads: simplified, numbers as read, no punctuation or spaces."""
    return re.sub(r"\s+", "", remove_punctuation(to_simplified(arabic_to_hanzi(text))))


def homophone_variants(text: str) -> set[str]:
    """``text`` (simplified) with one run of 2–4 Chinese characters replaced by a frequent
    dictionary word that sounds the same (tones ignored)."""
    from pypinyin import lazy_pinyin

    sounds = lazy_pinyin(text, errors=lambda chars: [""] * len(chars))
    if len(sounds) != len(text):  # pypinyin merged something: do not guess positions
        return set()
    words = lexicon()
    out = set()
    for n in (2, 3, 4):
        for i in range(len(text) - n + 1):
            if not all(sounds[i : i + n]):
                continue
            span = text[i : i + n]
            for word in words.homophones(" ".join(sounds[i : i + n]))[:_VARIANTS_PER_SOUND]:
                if word != span:
                    out.add(text[:i] + word + text[i + n :])
    return out


@dataclass
class Candidate:
    text: str
    source: int  # the beam hypothesis it was made from (index)


def candidates(hypotheses: Sequence[str]) -> list[Candidate]:
    """The beam's hypotheses (simplified, duplicates dropped, best first), then the
    homophone variants of the best two that the word model scores highest."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for i, h in enumerate(hypotheses):
        s = to_simplified(h).strip()
        if s and s not in seen:
            out.append(Candidate(s, i))
            seen.add(s)
    variants: dict[str, int] = {}
    for c in out[:2]:
        for v in sorted(homophone_variants(c.text)):
            if v not in seen:
                variants.setdefault(v, c.source)
    best = sorted(variants, key=lambda v: (-word_logprob(v), v))[:MAX_VARIANTS]
    return out + [Candidate(v, variants[v]) for v in best]


@dataclass
class Choice:
    text: str
    index: int  # among the candidates; 0 = the beam's best hypothesis (simplified)
    scored: int = 0  # texts the acoustic model scored to find it (for profiling)


@dataclass
class TokenScorer:
    """An acoustic model that gives each text's per-token log-probabilities (float32, the
    terms :func:`choose`'s total sums) and the tokens it scored them as.

    Why per token: the decoder is causal, so a candidate that starts with the same tokens as
    a text already scored has the same log-probabilities on that prefix, and every later token
    adds a log-probability <= 0 (the end of text too, where the backend scores it). That
    bounds the candidate's acoustic score before it is scored, and about half of the
    candidates are shown to lose without scoring them (each scored text costs the decoder
    positions it does not share with one scored before: backends/decoder_scorer.py).

    ``logprobs(texts, limits)``: per text, at least its first ``limit`` terms (None: all).
    ``prefixes``: the scorer computes only those (then a candidate's start is scored first,
    and its rest only if the start does not already lose); ``end_term``: its arrays end
    with the end-of-text term (so a text has ``len(tokens) + 1`` terms). ``noise``: how far
    two scorings of the same tokens may differ (other passes, other padding); a candidate is
    dropped unscored only when even its upper bound is below the best exact total by more
    than twice this (each side may be off by it), and a rounding of the totals. ``shape``:
    (first chunk, candidates a pass) for a scorer of prefixes; None: PREFIX_CHUNK, BATCH.
    """

    logprobs: Callable[[Sequence[str], Sequence[int | None]], Sequence[np.ndarray]]
    tokens: Callable[[str], Sequence[int]]
    prefixes: bool = False
    end_term: bool = True
    noise: float = 1e-3
    shape: tuple[int, int] | None = None

    def pass_shape(self) -> tuple[int, int]:
        """(first chunk, candidates a pass): its ``shape``, else PREFIX_CHUNK and BATCH."""
        return self.shape or (PREFIX_CHUNK, BATCH)


# With a scorer of prefixes: a candidate's first pass scores this many terms past what is
# known of it, and the candidates with the best bounds go together in one decoder pass (its
# fixed cost, streaming the weights and the clip's keys and values, is about eight
# positions' worth). Both only change what is computed, never the choice; chosen on a cost
# model of the decoder scorer (10.6 ms a pass + 1.25 ms a position, one core) over the
# candidates of the AISHELL test clips: 210 ms a clip scoring whole texts one at a time,
# 152 in chunks of 4, three at a time; chunks of 2-8 and two to four at a time within 15 %.
# Each time a candidate is scored further, the chunk doubles (4, 8, 16...): one that has not
# lost after its first terms usually goes on to its end, and a long-form candidate (the rest
# of its 30 s window after it) then takes a few passes, not one per four tokens. On a Xeon
# with AMX (14 ms a pass + 1.2 ms a position): the 56 AISHELL test clips 333 -> 281 passes,
# 4,372 -> 4,570 positions; a 3.6-minute recording's 47 segments 696 -> 303 passes, 8,598 ->
# 9,931 positions, 27 -> 20 CPU s of scoring. A scorer whose positions cost less against its
# pass (bf16: backends/decoder_scorer.py) gives its own (TokenScorer.shape).
PREFIX_CHUNK = 4
BATCH = 3
GROWTH = 2


def shared_start(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens two sequences share from their start: the part of a candidate whose
    decoder log-probabilities are those of a text already scored."""
    k = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        k += 1
    return k


def choose(
    hypotheses: Sequence[str],
    acoustic: Callable[[Sequence[str]], Sequence[float]] | TokenScorer,
    end_scores: Sequence[float] | None = None,
    weight: float = LM_WEIGHT,
    char_bonus: float = CHAR_BONUS,
) -> Choice:
    """The best of ``candidates(hypotheses)`` by acoustic + ``weight`` × (word log-probability
    + ``char_bonus`` × characters).

    ``acoustic`` scores texts at once: the log-probability of their tokens given the audio.
    Where it leaves out the end of text (CTranslate2's align does), ``end_scores`` are the
    beam's total log-probabilities of the hypotheses, end included: a candidate then gets
    its source hypothesis's end-of-text term (beam total minus that hypothesis's acoustic
    score). Without it a hypothesis cut short would pay nothing for stopping early, and the
    word model, which prefers fewer words, would pick it.

    Given a :class:`TokenScorer`, only the candidates that may still win are scored (best
    bound first); the choice is the one scoring every candidate would make, but between
    candidates closer than the scorer's ``noise``, which are a tie at its precision.
    """
    cands = candidates(hypotheses)
    if len(cands) <= 1:  # nothing to choose between: no acoustic pass
        return Choice(cands[0].text if cands else "", 0, 0)
    texts = [c.text for c in cands]
    lm = [word_score(t, char_bonus) for t in texts]
    if isinstance(acoustic, TokenScorer):
        return _choose_pruned(cands, lm, hypotheses, acoustic, end_scores, weight)
    sources = sorted({c.source for c in cands}) if end_scores is not None else []
    extra = [hypotheses[i] for i in sources if hypotheses[i] not in texts]
    scored = dict(zip(texts + extra, acoustic(texts + extra), strict=True))
    am = []
    for c in cands:
        a = scored[c.text]
        if end_scores is not None:
            a += end_scores[c.source] - scored[hypotheses[c.source]]
        am.append(a)
    best = max(range(len(texts)), key=lambda i: (am[i] + weight * lm[i], -i))
    return Choice(texts[best], best, len(scored))


class _Scores:
    """The texts scored so far for one choice, wholly or their start: totals as
    :func:`choose` sums them, and per-token terms for the prefix bound."""

    def __init__(self, scorer: TokenScorer) -> None:
        self.scorer = scorer
        self.total: dict[str, float] = {}  # texts scored to the end
        self.known: dict[str, np.ndarray] = {}  # cumulative sums of the terms scored so far
        self._tokens: dict[str, tuple[int, ...]] = {}
        self._steps: dict[str, int] = {}  # how far each text is scored further next time

    def tokens(self, text: str) -> tuple[int, ...]:
        if text not in self._tokens:
            self._tokens[text] = tuple(self.scorer.tokens(text))
        return self._tokens[text]

    def terms(self, text: str) -> int:
        return len(self.tokens(text)) + self.scorer.end_term

    def score(self, requests: dict[str, int | None]) -> None:
        """Score each text's first ``limit`` terms (None: all of it)."""
        todo = {t: n for t, n in requests.items() if t not in self.total}
        if not todo:
            return
        got = self.scorer.logprobs(list(todo), list(todo.values()))
        for text, logp in zip(todo, got, strict=True):
            logp = np.asarray(logp)
            if todo[text] is None or len(logp) >= self.terms(text):
                # the sum exactly as score_tokens sums it (same array, numpy's order)
                self.total[text] = float(logp.sum())
            self.known[text] = np.cumsum(logp, dtype=np.float64)

    def _known_starts(self, text: str):
        """(k, cumulative sums) for each text scored so far, ``k`` of whose leading terms
        are also the text's: its own scored start, or the start another shares with it."""
        tokens = self.tokens(text)
        for other, cum in self.known.items():
            if other == text:
                yield len(cum), cum
            else:
                yield min(shared_start(tokens, self.tokens(other)), len(cum)), cum

    def known_terms(self, text: str) -> int:
        """How many of the text's leading terms are known."""
        return max((k for k, _ in self._known_starts(text)), default=0)

    def upper_bound(self, text: str) -> float:
        """An upper bound of the text's acoustic score: the sum of its terms known so far,
        its own or those of the start it shares with a text already scored (the rest adds
        log-probabilities <= 0)."""
        if text in self.total:
            return self.total[text]
        sums = [float(cum[k - 1]) for k, cum in self._known_starts(text) if k]
        if text not in self.known:
            sums.append(0.0)  # nothing of it scored: the bound an empty start gives
        return min(sums) + self.scorer.noise

    def limit(self, text: str, known: int | None = None) -> int | None:
        """How far to score the text next: all of it, or with a scorer of prefixes the next
        ``PREFIX_CHUNK`` terms (or its ``shape``'s), then twice as many each time
        (``GROWTH``), when more than that is left. ``known``: its leading terms known by
        then (default: those known now)."""
        if not self.scorer.prefixes:
            return None
        step = self._steps.get(text, self.scorer.pass_shape()[0])
        self._steps[text] = step * GROWTH
        limit = (self.known_terms(text) if known is None else known) + step
        return None if limit >= self.terms(text) else limit


def _choose_pruned(
    cands: list[Candidate],
    lm: list[float],
    hypotheses: Sequence[str],
    scorer: TokenScorer,
    end_scores: Sequence[float] | None,
    weight: float,
) -> Choice:
    """:func:`choose` scoring only what can change the choice, best bound first.

    A candidate's total is exact once its text (and, with ``end_scores``, its source
    hypothesis) is scored, computed with the same operations as the exhaustive path. Before
    that it has an upper bound: the prefix bound of :class:`_Scores`; a candidate that is its
    source hypothesis unchanged has acoustic + (end − acoustic), the beam total itself.
    Scoring stops when no unscored candidate's bound reaches the best exact total. With a
    scorer of prefixes the ``BATCH`` best bounds are scored together, each ``PREFIX_CHUNK``
    terms further (or to its end); or as many as its ``shape`` says."""
    scores = _Scores(scorer)
    n = len(cands)
    batch = scorer.pass_shape()[1] if scorer.prefixes else 1

    def needed(i: int) -> list[str]:
        c = cands[i]
        out = [c.text]
        if end_scores is not None:
            out.append(hypotheses[c.source])
        return [t for t in out if t not in scores.total]

    def exact(i: int) -> float:
        c = cands[i]
        a = scores.total[c.text]
        if end_scores is not None:
            a += end_scores[c.source] - scores.total[hypotheses[c.source]]
        return a + weight * lm[i]

    def bound(i: int) -> float:
        c = cands[i]
        if end_scores is None:
            return scores.upper_bound(c.text) + weight * lm[i]
        h = hypotheses[c.source]
        if c.text == h:
            return end_scores[c.source] + scorer.noise + weight * lm[i]
        if h not in scores.total:
            return math.inf
        return (
            scores.upper_bound(c.text) + (end_scores[c.source] - scores.total[h]) + (weight * lm[i])
        )

    # The beam's best first, whole: it is the usual winner, and its source's score is what
    # the bounds of its variants need. With a scorer of prefixes the best bounds' starts go
    # in the same pass, each a chunk past where it leaves the beam's best (what the next
    # pass would ask of it): a pass fewer a clip, where a pass's fixed cost (streaming the
    # weights) is most of its time. The decoder scorer computes each only from where it
    # leaves the beam's best, on that one's keys and values of the same pass.
    first: dict[str, int | None] = dict.fromkeys(needed(0))
    if scorer.prefixes and end_scores is None:
        best_tokens = scores.tokens(cands[0].text)
        for _, j in sorted((bound(i), -i) for i in range(1, n))[-batch:]:
            text = cands[-j].text
            first[text] = scores.limit(text, shared_start(scores.tokens(text), best_tokens))
    scores.score(first)
    while True:
        done = {i: exact(i) for i in range(n) if not needed(i)}
        best = max(done, key=lambda i: (done[i], -i))
        open_ = [(bound(i), -i) for i in range(n) if i not in done]
        open_ = sorted((b, j) for b, j in open_ if b >= done[best] - scorer.noise)
        if not open_:
            return Choice(cands[best].text, best, len(scores.total))
        requests: dict[str, int | None] = {}
        for _, j in reversed(open_[-batch:]):
            todo = needed(-j)
            if len(todo) == 2:  # an unscored source first: its score alone may bound it out
                requests[todo[1]] = None
            elif todo[0] not in requests:  # limit() advances the text's chunk: ask once
                requests[todo[0]] = scores.limit(todo[0])
        scores.score(requests)


# -- with a backend: its score_tokens is the acoustic model -----------------------------------


def _acoustic(
    model: Transcriber,
    clip: np.ndarray | EncodedClip,
    prompt: Sequence[int],
    before: Sequence[int] = (),
    after: Sequence[int] = (),
) -> Callable[[Sequence[str]], Sequence[float]] | TokenScorer:
    """The backend as :func:`choose`'s acoustic model: each text's tokens between ``before``
    and ``after``, after ``prompt``; per token where the backend can (so that candidates that
    cannot win go unscored)."""

    def tokens(text: str) -> list[int]:
        return [*before, *model.encode_text(text), *after]

    if model.scores_per_token:
        return TokenScorer(
            lambda texts, limits: model.token_logprobs(
                clip, prompt, [tokens(t) for t in texts], limits
            ),
            tokens,
            prefixes=model.scores_prefixes,
            end_term=model.scores_end_of_text,
            noise=model.score_noise,
            shape=model.score_shape,
        )
    return lambda texts: model.score_tokens(clip, prompt, [tokens(t) for t in texts])


def rescore_text(
    model: Transcriber,
    clip: np.ndarray | EncodedClip,
    prompt: Sequence[int],
    hypotheses: Sequence[str],
    end_scores: Sequence[float] | None = None,
) -> tuple[str, list[int]]:
    """The text :func:`choose` picks for a clip decoded without timestamps, and its tokens.

    The acoustic score is the backend's :meth:`~Transcriber.score_tokens` of each candidate
    after ``prompt``; ``end_scores`` as in :func:`choose` (given by a backend whose scoring
    leaves the end of text out)."""
    text = choose(hypotheses, _acoustic(model, clip, prompt), end_scores=end_scores).text
    return text, model.encode_text(text)


def rescore_segments(
    model: Transcriber,
    clip: np.ndarray | EncodedClip,
    prompt: Sequence[int],
    segments: Sequence[ClipSegment],
) -> None:
    """Timestamped windows (long-form): each segment's text is rescored among its homophone
    variants, scored by the acoustic model with the rest of the window's text around it. The
    beam's other hypotheses are not used: their segments do not line up. Texts and tokens are
    replaced in place; times are kept."""
    for k, seg in enumerate(segments):
        if not seg.text.strip():
            continue
        before = [x for s in segments[:k] for x in s.tokens]
        after = [x for s in segments[k + 1 :] for x in s.tokens]
        seg.text = choose([seg.text], _acoustic(model, clip, prompt, before, after)).text
        seg.tokens = model.encode_text(seg.text)
