"""jieba's Mandarin word frequencies and a homophone index of them, loaded a bucket at a time.

Why not ``jieba.Tokenizer`` itself: rescoring reads a few hundred of its 498k entries per
clip, but jieba builds them all into one dict at every start (0.6-1.3 CPU s here), and the
homophone index (229k sounds) took another 0.3-0.6 s to unpickle. That cost falls inside
every ``evaluate`` and ``transcribe`` that rescores Mandarin, on the same cores as the
decoding. Here both tables are cut into buckets by a hash of the key (the word's first
character, so a sentence position's every word is in one bucket; the sound itself), each
bucket marshalled on its own: a start reads the file (a few milliseconds), and a bucket is
unmarshalled the first time a key in it is looked up. The entries and the segmentation are
jieba's: ``word_logprob`` here and jieba's ``calc`` over ``get_DAG`` give the same number.

Built once from jieba's dictionary (with pypinyin for the sounds, ~15 s) and cached on disk.
"""

from __future__ import annotations

import logging
import marshal
import math
import os
import pickle
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from whispertune.models.cache import cache_dir

logger = logging.getLogger(__name__)

_BUCKETS = 4096
_FORMAT = 1  # bumped when the cached layout changes: an older cache is rebuilt
# Dictionary words rarer than this are no homophone alternatives (jieba counts: median ~3).
MIN_COUNT = 3
_HAN = re.compile(r"[\u4e00-\u9fff]")
_build_lock = threading.Lock()


def _bucket(key: str, buckets: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % buckets


@dataclass
class _Buckets:
    """A str-keyed table whose buckets are unmarshalled on first use. Two threads may
    unmarshal the same bucket at once; both get equal dicts and one is kept."""

    blobs: list[bytes]
    loaded: list[dict | None] = field(init=False)

    def __post_init__(self) -> None:
        self.loaded = [None] * len(self.blobs)

    def bucket(self, key: str) -> dict:
        i = _bucket(key, len(self.blobs))  # as many as the tables were cut into
        table = self.loaded[i]
        if table is None:
            table = self.loaded[i] = marshal.loads(self.blobs[i])
        return table

    @staticmethod
    def cut(table: dict[str, object], bucket_key) -> list[bytes]:
        parts: list[dict] = [{} for _ in range(_BUCKETS)]
        for key, value in table.items():
            parts[_bucket(bucket_key(key), _BUCKETS)][key] = value
        return [marshal.dumps(p) for p in parts]


@dataclass
class Lexicon:
    """jieba's word counts (its ``FREQ``: each word and, with count 0, each of its starts)
    and the homophone index (toneless pinyin of 2-4 character words → the words, most
    frequent first)."""

    words: _Buckets  # bucketed by the word's first character
    total: int  # jieba's ``total``: the sum of the counts
    sounds: _Buckets  # bucketed by the sound

    def count(self, word: str) -> int | None:
        """jieba's ``FREQ.get(word)``: None where the dictionary has no such entry."""
        return self.words.bucket(word[0]).get(word)

    @classmethod
    def from_saved(cls, saved: dict) -> Lexicon:
        """From the tables as ``_build`` makes them and the cache keeps them."""
        return cls(_Buckets(saved["words"]), saved["total"], _Buckets(saved["sounds"]))

    def homophones(self, sound: str) -> Sequence[str]:
        return self.sounds.bucket(sound).get(sound, ())

    def word_logprob(self, sentence: str) -> float:
        """The natural log-probability of ``sentence``'s most probable segmentation into
        dictionary words under jieba's unigram model: jieba's ``calc`` over its
        ``get_DAG`` (a character the dictionary lacks counts 1)."""
        n = len(sentence)
        if not n:
            return 0.0
        log_total = math.log(self.total)
        route = [0.0] * (n + 1)
        for k in range(n - 1, -1, -1):
            table = self.words.bucket(sentence[k])
            best = -math.inf
            end = k
            frag = sentence[k]
            # jieba's DAG: words starting at k, extended while the start is an entry
            while end < n and frag in table:
                count = table[frag]
                if count:
                    best = max(best, math.log(count) - log_total + route[end + 1])
                end += 1
                frag = sentence[k : end + 1]
            if best == -math.inf:  # no word starts here: the character alone
                best = math.log(table.get(sentence[k]) or 1) - log_total + route[k + 1]
            route[k] = best
        return route[0]


def lexicon() -> Lexicon:
    """The process's lexicon, loaded (or built and cached) on first use."""
    with _build_lock:
        return _load()


@lru_cache(maxsize=1)
def _load() -> Lexicon:
    import jieba

    path = cache_dir("rescoring") / f"lexicon{_FORMAT}-jieba{jieba.__version__}.pickle"
    if path.is_file():
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
            return Lexicon.from_saved(saved)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError):
            logger.warning("rebuilding the unreadable word tables %s", path)
    logger.info("building the word tables from jieba's dictionary (once, ~15 s)")
    saved = _build()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(saved, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)  # whole or not at all, whoever builds it at the same time
    for stale in path.parent.glob("sounds-jieba*.pickle"):  # the index before these tables
        stale.unlink(missing_ok=True)
    return Lexicon.from_saved(saved)


def _build() -> dict:
    import jieba
    from pypinyin import lazy_pinyin

    jieba.setLogLevel(logging.WARNING)
    tok = jieba.Tokenizer()
    tok.check_initialized()
    by_sound: dict[str, list[tuple[int, str]]] = {}
    for word, count in tok.FREQ.items():
        if count >= MIN_COUNT and 2 <= len(word) <= 4 and all(_HAN.match(c) for c in word):
            by_sound.setdefault(" ".join(lazy_pinyin(word)), []).append((count, word))
    sounds = {k: tuple(w for _, w in sorted(v, reverse=True)) for k, v in by_sound.items()}
    return {
        "words": _Buckets.cut(tok.FREQ, lambda word: word[0]),
        "total": tok.total,
        "sounds": _Buckets.cut(sounds, lambda sound: sound),
    }
