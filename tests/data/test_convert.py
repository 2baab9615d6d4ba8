"""manifest_from_folder and manifest_from_table on real files."""

from __future__ import annotations

import json
import shutil

import pytest

from whispertune.data.convert import (
    FolderOptions,
    TableOptions,
    manifest_from_folder,
    manifest_from_table,
    normalize_language,
)
from whispertune.data.manifest import read_manifest
from whispertune.errors import UserError


def test_normalize_language():
    assert normalize_language("zh") == "Chinese"
    assert normalize_language("zh-CN") == "Chinese"
    assert normalize_language("pt_BR") == "Portuguese"
    assert normalize_language("english") == "English"
    with pytest.raises(UserError, match="unknown language"):
        normalize_language("xx-YY")


# --- from a folder --------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path, make_wav):
    root = tmp_path / "corpus"
    make_wav(root / "a.wav", 1.0)
    (root / "a.txt").write_text("第一句\n", encoding="utf-8")
    make_wav(root / "sub" / "b.flac", 1.5)
    (root / "sub" / "b.txt").write_text("wrapped\nover lines\n", encoding="utf-8")
    make_wav(root / "c.wav", 0.5)  # no transcript
    (root / "bad.wav").write_text("not audio")
    (root / "bad.txt").write_text("text of a broken file")
    (root / "notes.md").write_text("not audio, ignored")
    return root


def test_from_folder(folder, tmp_path):
    out = tmp_path / "out" / "manifest.jsonl"
    result = manifest_from_folder(FolderOptions(folder=folder, output=out, language="zh"))
    assert result.written == 2
    assert result.no_transcript == [folder / "c.wav"]
    assert len(result.unreadable) == 1 and "bad.wav" in result.unreadable[0]
    assert "cannot be decoded" in result.unreadable[0]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {
            "audio": {"path": "../corpus/a.wav"},
            "sentence": "第一句",
            "language": "Chinese",
            "duration": 1.0,
        },
        {
            "audio": {"path": "../corpus/sub/b.flac"},
            "sentence": "wrapped over lines",
            "language": "Chinese",
            "duration": 1.5,
        },
    ]
    assert [s.audio_path.resolve() for s in read_manifest(out)] == [
        (folder / "a.wav").resolve(),
        (folder / "sub" / "b.flac").resolve(),
    ]


def test_from_folder_kaldi_transcripts_and_text_ext(tmp_path, make_wav):
    root = tmp_path / "kaldi"
    for name in ("u1", "u2", "u3"):
        make_wav(root / "wav" / f"{name}.wav", 0.5)
    (root / "text").write_text("u1 你好 世界\nu2\nu9 no audio for this id\n", encoding="utf-8")
    (root / "wav" / "u3.lab").write_text("from lab file")
    out = tmp_path / "m.jsonl"
    result = manifest_from_folder(FolderOptions(folder=root, output=out, text_ext="lab"))
    samples = read_manifest(out)
    assert [(s.audio_path.name, s.sentence) for s in samples] == [
        ("u1.wav", "你好 世界"),
        ("u2.wav", ""),  # an empty transcript is a no-speech sample
        ("u3.wav", "from lab file"),
    ]
    assert samples[0].language is None
    assert result.no_transcript == [] and result.unused_transcripts == 1


def test_from_folder_refuses_existing_output_and_empty_folders(folder, tmp_path):
    out = tmp_path / "m.jsonl"
    out.write_text("keep\n")
    with pytest.raises(UserError, match="already exists"):
        manifest_from_folder(FolderOptions(folder=folder, output=out))
    assert out.read_text() == "keep\n"
    manifest_from_folder(FolderOptions(folder=folder, output=out, force=True))
    assert len(read_manifest(out)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no audio files"):
        manifest_from_folder(FolderOptions(folder=empty, output=tmp_path / "x.jsonl"))
    with pytest.raises(UserError, match="not a folder"):
        manifest_from_folder(FolderOptions(folder=tmp_path / "nope", output=tmp_path / "x.jsonl"))
    with pytest.raises(UserError, match="unknown language"):
        manifest_from_folder(FolderOptions(folder=folder, output=tmp_path / "y", language="Elv"))


def test_from_folder_real_speech(shared_data, tmp_path):
    source = shared_data / "zh" / "aishell_s0150"
    expected = {s.audio_path.name: s for s in read_manifest(source / "manifest.jsonl")[:4]}
    root = tmp_path / "speech"
    root.mkdir()
    for name, sample in expected.items():
        shutil.copy(sample.audio_path, root / name)
        (root / name).with_suffix(".txt").write_text(sample.sentence, encoding="utf-8")
    out = tmp_path / "m.jsonl"
    manifest_from_folder(FolderOptions(folder=root, output=out, language="Chinese"))
    samples = read_manifest(out)
    assert len(samples) == 4
    for s in samples:
        assert s.sentence == expected[s.audio_path.name].sentence
        assert s.duration == pytest.approx(expected[s.audio_path.name].duration, abs=0.011)


# --- from a table ---------------------------------------------------------------------------


@pytest.fixture
def common_voice(tmp_path, make_wav):
    root = tmp_path / "cv"
    make_wav(root / "clips" / "one.wav", 1.0)
    make_wav(root / "clips" / "two.wav", 2.0)
    make_wav(root / "three.wav", 0.5)
    (root / "train.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\tlocale\n"
        'c1\tone.wav\t他说"你好"\t2\tzh-CN\n'
        "c2\tmissing.wav\tgone\t2\tzh-CN\n"
        "\n"
        "c3\ttwo.wav\tsecond\t1\tqq-XX\n"
        "c4\tthree.wav\tthird one\t0\ten\n"
        "c5\t\tno path\t0\ten\n",
        encoding="utf-8",
    )
    return root


def test_from_tsv_common_voice(common_voice, tmp_path):
    table = common_voice / "train.tsv"
    out = tmp_path / "m.jsonl"
    result = manifest_from_table(TableOptions(table=table, output=out))
    assert (result.rows, result.written) == (5, 2)
    assert result.skipped == [
        f"{table}:3: audio file not found: {common_voice.resolve() / 'missing.wav'}",
        f"{table}:5: unknown language 'qq-XX'",
        f"{table}:7: empty 'path'",
    ]
    samples = read_manifest(out)
    assert [(s.sentence, s.language, s.duration) for s in samples] == [
        ('他说"你好"', "Chinese", 1.0),
        ("third one", "English", 0.5),
    ]
    assert samples[0].audio_path.resolve() == (common_voice / "clips" / "one.wav").resolve()


def test_from_tsv_keeps_absolute_paths_absolute(tmp_path, make_wav):
    """A path the table gives absolute is written as given: not made relative to the
    manifest, and not through a link resolved (``store`` links to ``real``)."""
    make_wav(tmp_path / "real" / "a.wav", 1.0)
    (tmp_path / "store").symlink_to(tmp_path / "real")
    make_wav(tmp_path / "tables" / "b.wav", 1.0)
    absolute = tmp_path / "store" / "a.wav"
    table = tmp_path / "tables" / "list.tsv"
    table.write_text(f"path\tsentence\n{absolute}\tone\nb.wav\ttwo\n", encoding="utf-8")
    out = tmp_path / "out" / "m.jsonl"
    manifest_from_table(TableOptions(table=table, output=out))
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["audio"]["path"] for line in lines] == [str(absolute), "../tables/b.wav"]


def test_from_csv_with_quotes_audio_dir_and_columns(tmp_path, make_wav):
    audio = tmp_path / "audio"
    make_wav(audio / "x.wav", 1.0)
    make_wav(audio / "y.wav", 1.0)
    table = tmp_path / "meta" / "list.csv"
    table.parent.mkdir()
    table.write_text('file,text\nx.wav,"hello, world"\ny.wav,"two\nlines"\nz.wav,gone\n')
    out = tmp_path / "m.jsonl"
    result = manifest_from_table(
        TableOptions(
            table=table,
            output=out,
            audio_dir=audio,
            path_column="file",
            text_column="text",
            language="en",
        )
    )
    assert [(s.sentence, s.language) for s in read_manifest(out)] == [
        ("hello, world", "English"),
        ("two\nlines", "English"),
    ]
    # The quoted row spans lines 3-4; the next row starts on line 5.
    assert result.skipped == [f"{table}:5: audio file not found: {audio / 'z.wav'}"]


def test_delimiter_is_guessed_for_other_extensions(tmp_path, make_wav):
    make_wav(tmp_path / "x.wav", 1.0)
    table = tmp_path / "list.txt"
    table.write_text("path;sentence\nx.wav;semi colon\n")
    out = tmp_path / "m.jsonl"
    manifest_from_table(TableOptions(table=table, output=out))
    assert read_manifest(out)[0].sentence == "semi colon"


def test_from_tsv_errors(common_voice, tmp_path):
    table = common_voice / "train.tsv"
    with pytest.raises(UserError, match=r"train\.tsv:1: no column 'text' \(set --text-column\)"):
        manifest_from_table(TableOptions(table=table, output=tmp_path / "m", text_column="text"))
    with pytest.raises(UserError, match="table not found"):
        manifest_from_table(TableOptions(table=tmp_path / "no.tsv", output=tmp_path / "m"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("path\tsentence\nnope.wav\tx\n")
    with pytest.raises(UserError, match=r"none of the 1 rows could be used; first problem: .*:2:"):
        manifest_from_table(TableOptions(table=bad, output=tmp_path / "m"))
    existing = tmp_path / "exists.jsonl"
    existing.write_text("")
    with pytest.raises(UserError, match="already exists"):
        manifest_from_table(TableOptions(table=table, output=existing))
