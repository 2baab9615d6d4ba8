"""Text normalization for scoring: what CER/WER compare is normalized, never the raw strings.

Why each step: Whisper writes punctuation and (for Mandarin) often traditional characters
where references have neither; scoring raw text would count those as recognition errors. The
English path uses Whisper's own normalizer (contractions, numbers, spelling variants) so WER
figures are comparable with published ones.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass
class NormalizeOptions:
    remove_punctuation: bool = field(
        default=True,
        metadata={"help": "remove punctuation (ASCII and CJK full-width) before scoring"},
    )
    to_simplified: bool = field(
        default=True,
        metadata={"help": "convert traditional Chinese to simplified (zhconv) before scoring"},
    )
    english_normalizer: bool = field(
        default=True,
        metadata={"help": "apply Whisper's English normalizer (numbers, spellings) for WER"},
    )
    lowercase: bool = field(default=True, metadata={"help": "lower-case before scoring"})


def _is_punctuation(ch: str) -> bool:
    # Unicode categories P* (punctuation) and S* (symbols like ￥, ～), which covers ASCII and
    # the full-width CJK forms (，。！？、；：「」『』（）《》) alike.
    cat = unicodedata.category(ch)
    return cat.startswith(("P", "S"))


def remove_punctuation(text: str) -> str:
    return "".join(" " if _is_punctuation(ch) else ch for ch in text)


def to_simplified(text: str) -> str:
    return _zhconv().convert(text, "zh-cn")


_zhconv_lock = threading.Lock()


@lru_cache(maxsize=1)
def _zhconv_loaded():
    import zhconv

    zhconv.convert("", "zh-cn")  # builds its table (lazily, without a lock, inside zhconv)
    return zhconv


def _zhconv():
    """zhconv with its conversion table built: zhconv builds it on first use without a lock,
    so a second thread (a server's requests, a Model shared by threads) can read it half
    built; here the first use happens once, under a lock."""
    with _zhconv_lock:
        return _zhconv_loaded()


@lru_cache(maxsize=1)
def _english_normalizer():
    import json
    from importlib.resources import files

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    try:
        spelling = json.loads(
            files("whispertune").joinpath("resources/english_spelling.json").read_text("utf-8")
        )
    except (FileNotFoundError, OSError):
        spelling = {}
    return EnglishTextNormalizer(spelling)


def normalize(text: str, options: NormalizeOptions | None = None, *, english: bool = False) -> str:
    """Normalize ``text`` for scoring; ``english`` selects Whisper's English normalizer."""
    o = options or NormalizeOptions()
    text = unicodedata.normalize("NFKC", text)
    if english and o.english_normalizer:
        text = _english_normalizer()(text)
    if o.to_simplified:
        text = to_simplified(text)
    if o.remove_punctuation:
        text = remove_punctuation(text)
    if o.lowercase:
        text = text.lower()
    return re.sub(r"\s+", " ", text).strip()


def for_cer(text: str) -> str:
    """Characters to compare for CER: spaces carry no meaning in Chinese/Japanese text."""
    return re.sub(r"\s+", "", text)
