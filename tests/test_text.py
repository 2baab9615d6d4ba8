"""Scoring normalization: what would otherwise be counted as recognition errors is removed."""

from whispertune.text import NormalizeOptions, for_cer, normalize


def test_cjk_and_ascii_punctuation_removed():
    assert for_cer(normalize("你好，世界！「测试」（一）、二。")) == "你好世界测试一二"
    assert normalize("Hello, world!") == "hello world"


def test_traditional_to_simplified():
    assert for_cer(normalize("南沙區東湧鎮發生一起血案")) == "南沙区东涌镇发生一起血案"


def test_each_step_can_be_switched_off():
    o = NormalizeOptions(remove_punctuation=False, to_simplified=False, lowercase=False)
    assert normalize("區，A", o) == "區,A"  # NFKC still folds the full-width comma


def test_full_width_forms_fold_to_ascii():
    assert normalize("ＡＢＣ１２３") == "abc123"


def test_english_normalizer_for_wer():
    a = normalize("Mr. Smith's colour is 20 percent", english=True)
    b = normalize("mister smith's color is twenty percent", english=True)
    assert a == b


def test_symbols_removed_like_punctuation_on_both_sides():
    assert normalize("50% off") == normalize("50 off!") == "50 off"
