"""Arabic numbers in Mandarin output written as read, and a manifest's numeral convention."""

from __future__ import annotations

import pytest

from whispertune.numerals import arabic_to_hanzi, cardinal, numeral_style


@pytest.mark.parametrize(
    ("text", "read"),
    [
        # Whisper-base's own outputs on AISHELL clips, and the references' forms
        ("清点出300多斤硬币总共1.2万元", "清点出三百多斤硬币总共一点二万元"),
        ("影片预计于2016底上映", "影片预计于二零一六底上映"),
        ("为实现20年前承诺", "为实现二十年前承诺"),
        ("外界推估预产期在9月", "外界推估预产期在九月"),
        ("2010年的GDP增长了3.5%", "二零一零年的GDP增长了百分之三点五"),
        ("挪用4000万", "挪用四千万"),
        ("2000万元", "两千万元"),
        ("46岁的他", "四十六岁的他"),
        ("2个人", "两个人"),
        ("第2季度", "第二季度"),
        ("2月", "二月"),
        ("1/3的人", "三分之一的人"),
        ("共有1,200人", "共有一千二百人"),
        ("区号0571", "区号零五七一"),
        ("10005", "一万零五"),
        ("150000", "十五万"),
        ("100年前", "一百年前"),
        ("2000元", "两千元"),
        ("３．３０", "三点三零"),
        ("MP3和G20峰会", "MP3和G20峰会"),  # names keep their digits
        ("没有数字", "没有数字"),
    ],
)
def test_numbers_are_written_as_read(text, read):
    assert arabic_to_hanzi(text) == read


def test_conversion_is_idempotent():
    once = arabic_to_hanzi("2016年有300多人")
    assert arabic_to_hanzi(once) == once


@pytest.mark.parametrize(
    ("n", "read"),
    [(0, "零"), (10, "十"), (15, "十五"), (105, "一百零五"), (1050, "一千零五十"),
     (100000000, "一亿"), (100005000, "一亿零五千"), (1150000, "一百一十五万")],
)
def test_cardinals(n, read):
    assert cardinal(n) == read


def test_numeral_style_of_transcripts():
    written = ["挪用公款四千万", "今年四十六岁", "二零一六年上映", "其中有两个是内因的指标"]
    assert numeral_style(written) == "hanzi"
    assert numeral_style(written + ["预计4000万"]) is None  # digits: the other convention
    assert numeral_style(["其中有两个是内因的指标", "没有数字"]) is None  # nothing to go by
