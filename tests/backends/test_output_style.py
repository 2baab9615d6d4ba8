"""A model's recorded output style reaches every decode: real whisper-base writes digits on an
AISHELL clip, and a model directory that records the corpus's convention writes them as read."""

from __future__ import annotations

import re

import pytest

from whispertune.audio import load_audio
from whispertune.backends import DecodeOptions, create_transcriber
from whispertune.errors import UserError
from whispertune.models.builtin import builtin_ct2_dir
from whispertune.output_style import OutputStyle, write_style

# "清点出三百多斤硬币总共一点二万余元": whisper-base writes 300 and 1.2万
CLIP = "zh/aishell_s0150/clips/BAC009S0150W0440.opus"


@pytest.fixture(scope="module")
def clip(shared_data):
    return load_audio(shared_data / CLIP)


@pytest.fixture(scope="module")
def styled_model(tmp_path_factory):
    """builtin:base as a plain CTranslate2 directory (links to its files) that records the
    hanzi convention, as ``whispertune train`` and ``export`` write it."""
    out = tmp_path_factory.mktemp("styled")
    for f in builtin_ct2_dir("base").iterdir():
        (out / f.name).symlink_to(f)
    write_style(out, OutputStyle(numerals="hanzi"))
    return out


@pytest.mark.slow
def test_numerals_follow_the_recorded_style(clip, styled_model, shared_data):
    opts = DecodeOptions(language="zh", beam_size=1, temperatures=[0.0])
    base = create_transcriber("builtin:base", "ct2")
    plain = base.transcribe_clips([clip], opts)[0]
    assert re.search(r"\d", plain.text), plain.text  # the base model's convention: digits

    styled = create_transcriber(str(styled_model), "ct2")
    auto = styled.transcribe_clips([clip], opts)[0]
    assert auto.tokens == plain.tokens  # same decode, only the text is written out
    assert not re.search(r"\d", auto.text) and "三百" in auto.text, auto.text
    kept = styled.transcribe_clips([clip], DecodeOptions(**{**vars(opts), "numerals": "keep"}))
    assert kept[0].text == plain.text
    forced = base.transcribe_clips([clip], DecodeOptions(**{**vars(opts), "numerals": "hanzi"}))
    assert forced[0].text == auto.text

    # English is never rewritten
    english = load_audio(shared_data / "en/jfk/jfk.flac")
    en_opts = DecodeOptions(language="en", beam_size=1, temperatures=[0.0])
    assert styled.transcribe_clips([english], en_opts)[0].text == (
        base.transcribe_clips([english], en_opts)[0].text
    )


def test_unknown_numerals_choice_is_refused(styled_model):
    with pytest.raises(UserError, match="--numerals"):
        create_transcriber(str(styled_model), "ct2").transcribe_clips(
            [], DecodeOptions(numerals="roman")
        )
