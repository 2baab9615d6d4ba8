"""Arabic numerals in Chinese text written out in Chinese characters, the way it is read aloud.

Why: Whisper writes ``4000万``, ``46岁``, ``2016年`` where Mandarin ASR corpora (AISHELL,
WenetSpeech, KeSpeech) transcribe what was said: ``四千万``, ``四十六岁``, ``二零一六年``. A
fine-tune can learn that convention only by adapting the decoder's language model, which on
half an hour of text also trades away vocabulary; a fixed rewrite of the model's output costs
nothing and forgets nothing. ``numeral_style`` reads which convention a training manifest
follows, so a fine-tuned model can carry it to inference (see ``transcribe``).

The reading rules are those of read Mandarin: years and codes digit by digit (``二零一六``),
other integers as cardinals with 万/亿 grouping (``一千零五``, ``十五万``), ``两`` for a lone 2
before a measure word or 千/万/亿 (``两个``, ``两千``), decimals digit by digit after ``点``,
``百分之`` for percentages and ``分之`` for fractions. Digits attached to Latin letters
(``MP3``, ``G20``) are names and stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_DIGITS = "零一二三四五六七八九"
_SMALL_UNITS = ("", "十", "百", "千")
_BIG_UNITS = ("", "万", "亿", "万亿")
# Two or more numeral characters in a row: a number written out (四千万, 二零一六), which a
# lone character (一个, 万一) is not.
_WRITTEN_NUMBER = re.compile(r"[零〇一二两三四五六七八九十百千万亿]{2,}")
_FULL_WIDTH = str.maketrans("０１２３４５６７８９％．，／", "0123456789%.,/")

# A lone 2 before one of these is read 两 (两个, 两岁), before anything else 二 (二月, 二号).
_LIANG_BEFORE = set(
    "个位名人次岁年天周种家条件只张台辆部套本份倍块层座所项场支队组颗瓶杯碗双对口户间分秒"
    "千万亿"
)
# Four-digit numbers in this range with none of these after them are years read digit by
# digit (2016底, 1990年); with one of them they are amounts (2000元, 1500万).
_AMOUNT_AFTER = set("元块万亿千百多余个人名位家次件只张台辆部套本份倍米克吨斤公里平岁%")

_NUMBER = re.compile(
    r"(?<![A-Za-z0-9.])"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:/(?P<den>\d+))?"
    r"(?P<pct>%)?"
    r"(?![A-Za-z0-9])"
)


def digits_one_by_one(digits: str) -> str:
    return "".join(_DIGITS[int(d)] for d in digits)


def _group(n: int) -> str:
    """0 < n < 10000 as read inside a larger number: 一千零五, 三百二十, 一十五."""
    out = []
    zero = False
    for i, d in enumerate(f"{n:04d}"):
        d = int(d)
        unit = _SMALL_UNITS[3 - i]
        if d == 0:
            zero = bool(out)
            continue
        if zero:
            out.append("零")
            zero = False
        out.append(_DIGITS[d] + unit)
    return "".join(out)


def cardinal(n: int) -> str:
    """A non-negative integer below 10**16 as read: 10 十, 105 一百零五, 150000 十五万."""
    if n == 0:
        return "零"
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    out = []
    pending_zero = False
    for k in range(len(groups) - 1, -1, -1):
        g = groups[k]
        if g == 0:
            pending_zero = bool(out)
            continue
        if out and (pending_zero or g < 1000):
            out.append("零")
        pending_zero = False
        out.append(_group(g) + _BIG_UNITS[k])
    text = "".join(out)
    if text.startswith("一十"):
        text = text[1:]  # 十五, not 一十五
    return text


def _integer(digits: str, before: str, after: str) -> str:
    if len(digits) > 1 and digits.startswith("0"):
        return digits_one_by_one(digits)  # codes: 007, 0571
    n = int(digits)
    if len(digits) == 4 and 1000 <= n < 2100 and (after == "年" or after not in _AMOUNT_AFTER):
        return digits_one_by_one(digits)  # years: 二零一六年
    if len(digits) > 12:
        return digits_one_by_one(digits)
    text = cardinal(n)
    if text == "二" and after in _LIANG_BEFORE and before != "第":
        return "两"
    if text.startswith("二") and text[1:2] in ("千", "万", "亿") and before != "第":
        return "两" + text[1:]  # 两千, 两万
    return text


def _number(num: str, before: str, after: str) -> str:
    num = num.replace(",", "")
    whole, _, frac = num.partition(".")
    text = _integer(whole, before, after if not frac else "")
    return text + ("点" + digits_one_by_one(frac) if frac else "")


def arabic_to_hanzi(text: str) -> str:
    """Write the Arabic numbers of Chinese ``text`` in Chinese characters, as they are read."""
    text = text.translate(_FULL_WIDTH)

    def replace(m: re.Match) -> str:
        before = text[m.start() - 1] if m.start() else ""
        after = text[m.end()] if m.end() < len(text) else ""
        num, den, pct = m.group("num"), m.group("den"), m.group("pct")
        if den is not None:
            if "." in num or "," in num or pct:
                return m.group(0)
            return _number(den, "", "") + "分之" + _number(num, "", "")
        if pct:
            return "百分之" + _number(num, "", "")
        return _number(num, before, after)

    return _NUMBER.sub(replace, text)



def numeral_style(sentences: Iterable[str], *, minimum: int = 3) -> str | None:
    """``"hanzi"`` when Chinese transcripts write numbers in characters and never in digits.

    Why a minimum: a manifest with no numbers at all says nothing about its convention, and
    one with a stray digit among hundreds of written numbers still follows the written one:
    the rule is that written numbers outnumber digit runs ten to one.
    """
    written = digits = 0
    for s in sentences:
        digits += len(re.findall(r"\d+", s.translate(_FULL_WIDTH)))
        written += len(_WRITTEN_NUMBER.findall(s))
    if written >= minimum and digits * 10 <= written:
        return "hanzi"
    return None
