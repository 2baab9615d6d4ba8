"""The word tables behind Mandarin rescoring, loaded a bucket at a time: the same numbers as
jieba's own tokenizer over its own dictionary (real jieba, real pinyin)."""

from __future__ import annotations

import pickle

import pytest

from whispertune import lexicon as lexicon_module
from whispertune.lexicon import Lexicon, _Buckets, lexicon


@pytest.fixture(scope="module")
def jieba_tokenizer():
    import jieba

    tok = jieba.Tokenizer()
    tok.check_initialized()
    return tok


def _jieba_logprob(tok, sentence: str) -> float:
    route: dict = {}
    tok.calc(sentence, tok.get_DAG(sentence), route)
    return route[0][0]


def test_word_log_probabilities_are_jiebas_to_the_bit(jieba_tokenizer):
    words = lexicon()
    sentences = [
        "后者接受日本媒体采访时表示",
        "他扬言要报复",
        "他洋盐要报复",  # homophones of words: characters the dictionary knows apart
        "到一家煮饱店",
        "总共四千万",
        "三洞楼美洞楼前有T恤",  # a Latin letter the dictionary lacks
        "𠀀𠀁",  # characters it has never seen
        "的",
        "中华人民共和国中央人民政府",  # words of many characters, starts of longer ones
    ]
    for s in sentences:
        assert words.word_logprob(s) == _jieba_logprob(jieba_tokenizer, s), s
    assert words.word_logprob("") == 0.0
    for word in ("中华人民共和国", "中华人民", "扬言", "𠀀"):
        assert words.count(word) == jieba_tokenizer.FREQ.get(word), word


def test_homophones_are_the_dictionary_words_of_that_sound_most_frequent_first(
    jieba_tokenizer,
):
    words = lexicon()
    found = words.homophones("yang yan")
    assert "扬言" in found
    counts = [jieba_tokenizer.FREQ[w] for w in found]
    assert counts == sorted(counts, reverse=True)
    assert all(c >= lexicon_module.MIN_COUNT for c in counts)
    assert words.homophones("no such sound") == ()


def test_a_start_reads_only_the_buckets_it_looks_up():
    blobs = _Buckets.cut({"扬言": 5, "扬": 0, "报复": 9, "报": 3}, lambda word: word[0])
    words = Lexicon(_Buckets(blobs), 17, _Buckets(_Buckets.cut({}, lambda s: s)))
    assert not any(b is not None for b in words.words.loaded)
    assert words.count("扬言") == 5
    assert sum(b is not None for b in words.words.loaded) == 1
    assert words.count("扬州") is None


def test_an_unreadable_cache_is_rebuilt_whole(tmp_path, monkeypatch):
    """A cache cut short (a process killed while another wrote it, a full disk) is built
    again, not read as empty tables."""
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path))
    small = {
        "words": _Buckets.cut({"扬言": 5, "扬": 0}, lambda word: word[0]),
        "total": 5,
        "sounds": _Buckets.cut({"yang yan": ("扬言",)}, lambda s: s),
    }
    monkeypatch.setattr(lexicon_module, "_build", lambda: small)
    lexicon_module._load.cache_clear()
    stale = tmp_path / "rescoring" / "sounds-jieba0.42.1.pickle"  # the index before them
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    try:
        built = lexicon()
        assert not stale.exists()
        assert built.homophones("yang yan") == ("扬言",)
        (path,) = (tmp_path / "rescoring").glob("lexicon*.pickle")
        path.write_bytes(path.read_bytes()[:100])
        lexicon_module._load.cache_clear()
        again = lexicon()
        assert again.count("扬言") == 5
        with open(path, "rb") as f:
            assert pickle.load(f)["total"] == 5  # written whole again
    finally:
        lexicon_module._load.cache_clear()
