"""`whispertune data aishell` on the real 12-clip AISHELL-1 layout (aishell_mini).

Multi-speaker cases (resume) repack the same real WAV bytes into several speaker tarballs, so
every test runs on real audio and the whole module stays well under a few seconds. Network
tests only ever talk to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

from whispertune.data import read_manifest
from whispertune.data.aishell import (
    STATE_DIR,
    AishellOptions,
    AishellResult,
    download_archive,
    prepare_aishell,
)
from whispertune.errors import UserError

# Same location as conftest.SHARED_DATA: the shared data folder beside the checkout.
MINI = Path(__file__).resolve().parents[2].parent / "shared/data/aishell_mini/data_aishell.tgz"
pytestmark = pytest.mark.skipif(not MINI.is_file(), reason=f"{MINI} not available")

TRAIN = "W0212 W0287 W0369 W0398 W0406 W0416 W0420 W0421".split()
DEV = ["W0422", "W0425"]
TEST = ["W0426", "W0432"]


def _ids(short: list[str]) -> list[str]:
    return [f"BAC009S0150{s}" for s in short]


# ------------------------------------------------------------------ helpers


def _mini_contents() -> tuple[bytes, dict[str, bytes]]:
    """The transcript bytes and {"split/S0150/ID.wav": bytes} of the real mini archive."""
    wavs: dict[str, bytes] = {}
    with tarfile.open(MINI, "r:gz") as outer:
        transcript = outer.extractfile("data_aishell/transcript/aishell_transcript_v0.8.txt")
        nested = outer.extractfile("data_aishell/wav/S0150.tar.gz")
        assert transcript is not None and nested is not None
        text = transcript.read()
        with tarfile.open(fileobj=io.BytesIO(nested.read()), mode="r:gz") as inner:
            for m in inner.getmembers():
                if m.isfile():
                    f = inner.extractfile(m)
                    assert f is not None
                    wavs[m.name] = f.read()
    return text, wavs


def _targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _build_archive(
    path: Path,
    speakers: dict[str, dict[str, bytes]],
    transcript: bytes | None,
    transcript_last: bool = False,
) -> Path:
    """An outer data_aishell.tgz with one nested tarball per speaker."""
    files: dict[str, bytes] = {}
    if transcript is not None and not transcript_last:
        files["data_aishell/transcript/aishell_transcript_v0.8.txt"] = transcript
    for spk, members in speakers.items():
        files[f"data_aishell/wav/{spk}.tar.gz"] = _targz(members)
    if transcript is not None and transcript_last:
        files["data_aishell/transcript/aishell_transcript_v0.8.txt"] = transcript
    path.write_bytes(_targz(files))
    return path


@pytest.fixture(scope="module")
def mini() -> tuple[bytes, dict[str, bytes]]:
    return _mini_contents()


@pytest.fixture
def three_speakers(tmp_path: Path, mini) -> Path:
    """The 12 real clips as three speaker tarballs (train / dev / test), transcript last."""
    text, wavs = mini
    speakers = {
        f"S015{i}": {n: b for n, b in wavs.items() if n.startswith(split + "/")}
        for i, split in enumerate(("train", "dev", "test"))
    }
    return _build_archive(tmp_path / "data_aishell.tgz", speakers, text, transcript_last=True)


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _check_complete(out: Path) -> None:
    train, dev, test = (_lines(out / f"{s}.jsonl") for s in ("train", "dev", "test"))
    ids = [Path(x["audio"]["path"]).stem for x in train]
    assert ids == sorted(_ids(TRAIN + DEV)) and len(set(ids)) == 10
    assert [Path(x["audio"]["path"]).stem for x in dev] == _ids(DEV)
    assert [Path(x["audio"]["path"]).stem for x in test] == _ids(TEST)
    assert not list(out.rglob("*.part"))


# ------------------------------------------------------------------ preparation


def test_prepare_real_mini_archive(tmp_path: Path) -> None:
    before = _fingerprint(MINI)
    out = tmp_path / "aishell"
    result = prepare_aishell(AishellOptions(archive=MINI, out=out))

    assert isinstance(result, AishellResult)
    assert (result.train, result.dev, result.test) == (10, 2, 2)
    assert (result.speakers, result.files_written, result.missing_transcript) == (1, 12, 0)
    _check_complete(out)

    with tarfile.open(MINI, "r:gz") as tar:
        f = tar.extractfile("data_aishell/transcript/aishell_transcript_v0.8.txt")
        assert f is not None
        expected = {
            line.split()[0]: "".join(line.split()[1:])
            for line in f.read().decode("utf-8").splitlines()
            if line.strip()
        }
    assert expected["BAC009S0150W0420"] == "他身穿黑色T恤"
    seen = 0
    for split in ("train", "dev", "test"):
        for raw, sample in zip(
            _lines(out / f"{split}.jsonl"), read_manifest(out / f"{split}.jsonl"), strict=True
        ):
            assert not Path(raw["audio"]["path"]).is_absolute()
            assert raw["audio"]["path"].startswith("wav/")
            assert sample.sentence == expected[sample.audio_path.stem]
            assert " " not in sample.sentence
            assert sample.language == "Chinese"
            info = sf.info(str(sample.audio_path))
            assert (info.samplerate, info.channels) == (16000, 1)
            assert sample.duration == pytest.approx(info.frames / info.samplerate, abs=0.006)
            assert 2.0 < sample.duration < 3.1
            seen += 1
    assert seen == 14  # 10 train (incl. dev) + 2 dev + 2 test
    # bytes of the extracted WAV are the archive's, unchanged
    _, wavs = _mini_contents()
    assert (out / "wav/test/S0150/BAC009S0150W0426.wav").read_bytes() == wavs[
        "test/S0150/BAC009S0150W0426.wav"
    ]
    assert _fingerprint(MINI) == before, "the user's archive must not be touched"


def test_no_dev_in_train_and_language(tmp_path: Path) -> None:
    result = prepare_aishell(
        AishellOptions(archive=MINI, out=tmp_path / "o", dev_in_train=False, language="zh")
    )
    assert (result.train, result.dev, result.test) == (8, 2, 2)
    assert {x["language"] for x in _lines(tmp_path / "o/train.jsonl")} == {"zh"}


def test_rerun_of_finished_run_only_rewrites_manifests(tmp_path: Path) -> None:
    out = tmp_path / "o"
    prepare_aishell(AishellOptions(archive=MINI, out=out))
    wav = out / "wav/train/S0150/BAC009S0150W0212.wav"
    mtime = wav.stat().st_mtime_ns
    again = prepare_aishell(AishellOptions(archive=MINI, out=out))
    assert (again.train, again.test, again.files_written, again.speakers_resumed) == (10, 2, 0, 1)
    assert wav.stat().st_mtime_ns == mtime
    _check_complete(out)


def test_resume_after_interruption(tmp_path: Path, three_speakers: Path) -> None:
    before = _fingerprint(three_speakers)
    out = tmp_path / "out"
    done: list[str] = []

    def interrupt_after_first(speaker: str) -> None:
        done.append(speaker)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_aishell(AishellOptions(archive=three_speakers, out=out), interrupt_after_first)
    assert done == ["S0150"]
    assert not (out / "train.jsonl").exists()  # manifests only appear once complete
    assert (out / STATE_DIR / "speakers/S0150.json").is_file()
    # what a kill in the middle of the next speaker leaves behind: a half-written temp file
    half = out / "wav/dev/S0150/BAC009S0150W0422.wav.part"
    half.parent.mkdir(parents=True)
    half.write_bytes(b"RIFF\0\0")

    calls: list[str] = []
    result = prepare_aishell(AishellOptions(archive=three_speakers, out=out), calls.append)
    assert calls == ["S0151", "S0152"]  # S0150 was not redone
    assert (result.speakers, result.speakers_resumed, result.files_written) == (3, 1, 4)
    assert (result.train, result.dev, result.test) == (10, 2, 2)
    _check_complete(out)
    assert _fingerprint(three_speakers) == before


def test_deleted_output_of_one_speaker_is_redone(tmp_path: Path, three_speakers: Path) -> None:
    out = tmp_path / "out"
    prepare_aishell(AishellOptions(archive=three_speakers, out=out))
    (out / "wav/test/S0150/BAC009S0150W0432.wav").unlink()
    (out / STATE_DIR / "speakers/S0151.json").unlink()
    calls: list[str] = []
    result = prepare_aishell(AishellOptions(archive=three_speakers, out=out), calls.append)
    assert calls == ["S0151", "S0152"]
    assert (result.files_written, result.speakers_resumed) == (4, 1)
    _check_complete(out)


def test_missing_transcript_is_counted_and_listed(tmp_path: Path, mini) -> None:
    text, wavs = mini
    lines = [ln for ln in text.decode().splitlines() if not ln.startswith("BAC009S0150W0287")]
    lines.append("BAC009S0999W0001 没有 音频")
    archive = _build_archive(
        tmp_path / "data_aishell.tgz", {"S0150": wavs}, "\n".join(lines).encode()
    )
    result = prepare_aishell(AishellOptions(archive=archive, out=tmp_path / "o"))
    assert (result.train, result.missing_transcript, result.transcript_without_audio) == (9, 1, 1)
    assert (tmp_path / "o/missing_transcript.txt").read_text() == "BAC009S0150W0287\n"


# ------------------------------------------------------------------ refusals and errors


def test_refuses_non_empty_foreign_dir(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty.*--force"):
        prepare_aishell(AishellOptions(archive=MINI, out=out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    result = prepare_aishell(AishellOptions(archive=MINI, out=out, force=True))
    assert result.train == 10
    assert (out / "notes.txt").read_text() == "keep me"


def test_archive_inside_out_dir_is_allowed_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "aishell"
    out.mkdir()
    archive = out / "data_aishell.tgz"
    archive.write_bytes(MINI.read_bytes())
    before = _fingerprint(archive)
    assert prepare_aishell(AishellOptions(archive=archive, out=out, force=True)).test == 2
    assert prepare_aishell(AishellOptions(archive=archive, out=out)).test == 2
    assert _fingerprint(archive) == before


def test_other_archive_in_previous_run_is_read_again(tmp_path: Path, three_speakers: Path) -> None:
    out = tmp_path / "o"
    prepare_aishell(AishellOptions(archive=MINI, out=out))
    calls: list[str] = []
    result = prepare_aishell(AishellOptions(archive=three_speakers, out=out), calls.append)
    assert calls == ["S0150", "S0151", "S0152"]  # nothing kept from the other archive
    assert (result.train, result.speakers_resumed) == (10, 0)
    _check_complete(out)


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="archive not found"):
        prepare_aishell(AishellOptions(archive=tmp_path / "nope.tgz", out=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<html>404 Not Found</html>", "not a readable .tar.gz"),
        (gzip.compress(b"just some text, not a tar" * 40), "not a readable .tar.gz"),
        (_targz({"photos/cat.jpg": b"\xff\xd8"}), "not the AISHELL-1 layout"),
        (_targz({"data_aishell/wav/S0150.tar.gz": b"garbage"}), "S0150.tar.gz: damaged"),
    ],
    ids=["html", "gzip-not-tar", "other-tar", "bad-nested"],
)
def test_bad_archive(tmp_path: Path, content: bytes, match: str) -> None:
    archive = tmp_path / "data_aishell.tgz"
    archive.write_bytes(content)
    with pytest.raises(UserError, match=match):
        prepare_aishell(AishellOptions(archive=archive, out=tmp_path / "o"))


def test_archive_without_transcript(tmp_path: Path, mini) -> None:
    _, wavs = mini
    archive = _build_archive(tmp_path / "a.tgz", {"S0150": wavs}, None)
    with pytest.raises(UserError, match="no transcript"):
        prepare_aishell(AishellOptions(archive=archive, out=tmp_path / "o"))


def test_truncated_archive_keeps_work_done(tmp_path: Path, three_speakers: Path) -> None:
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(three_speakers.read_bytes()[: three_speakers.stat().st_size * 3 // 4])
    with pytest.raises(UserError, match="truncated or corrupt.*resume"):
        prepare_aishell(AishellOptions(archive=cut, out=tmp_path / "o"))
    assert (tmp_path / "o" / STATE_DIR / "speakers/S0150.json").is_file()


@pytest.mark.parametrize("name", ["../../evil.wav", "/tmp/evil.wav", "train/../../evil.wav"])
def test_unsafe_member_rejected(tmp_path: Path, mini, name: str) -> None:
    text, wavs = mini
    members = {name: next(iter(wavs.values()))}
    archive = _build_archive(tmp_path / "a.tgz", {"S0150": members}, text)
    out = tmp_path / "deep" / "o"
    with pytest.raises(UserError, match="rejected"):
        prepare_aishell(AishellOptions(archive=archive, out=out))
    assert not list(tmp_path.rglob("evil.wav*"))


# ------------------------------------------------------------------ download


def test_offline_download_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        prepare_aishell(
            AishellOptions(out=tmp_path / "o", url="http://127.0.0.1:9/data_aishell.tgz")
        )
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "cannot download http://127.0.0.1:9/data_aishell.tgz" in message
    assert "--archive" in message and "offline" in message


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as server:  # accepts connections (backlog) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/data_aishell.tgz"
        start = time.monotonic()
        with pytest.raises(UserError, match="--archive"):
            download_archive(url, tmp_path / "data_aishell.tgz", timeout=0.5)
        assert time.monotonic() - start < 5


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves the mini archive with Range support; the first full GET is cut in the middle."""

    data = b""
    cut_first = True
    requests: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        cls = type(self)
        cls.requests.append(self.headers.get("Range"))
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(cls.data) - 1}/{len(cls.data)}")
        else:
            self.send_response(200)
        body = cls.data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.cut_first and not start:
            cls.cut_first = False
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    _RangeHandler.data = MINI.read_bytes()
    _RangeHandler.cut_first = True
    _RangeHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/data_aishell.tgz"
    server.shutdown()
    server.server_close()


def test_download_resumes_with_range_then_prepares(tmp_path: Path, http_server: str) -> None:
    out = tmp_path / "o"
    md5 = hashlib.md5(MINI.read_bytes()).hexdigest()
    options = AishellOptions(out=out, url=http_server, md5=md5, timeout=5)
    with pytest.raises(UserError, match="re-run the same command to resume"):
        prepare_aishell(options)
    part = out / "data_aishell.tgz.part"
    cut = part.stat().st_size
    assert 0 < cut < MINI.stat().st_size
    result = prepare_aishell(options)
    assert _RangeHandler.requests == [None, f"bytes={cut}-"]
    assert result.downloaded and (result.train, result.test) == (10, 2)
    assert (out / "data_aishell.tgz").read_bytes() == MINI.read_bytes()
    assert not part.exists()
    _check_complete(out)


def test_download_md5_mismatch(tmp_path: Path, http_server: str) -> None:
    _RangeHandler.cut_first = False
    with pytest.raises(UserError, match="corrupt.*md5"):
        download_archive(http_server, tmp_path / "data_aishell.tgz", md5="0" * 32, timeout=5)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    from whispertune.cli import data_aishell

    parser = argparse.ArgumentParser(prog="whispertune")
    groups = parser.add_subparsers()
    data_sub = groups.add_parser("data").add_subparsers()
    data_aishell.register(data_sub)
    return parser


def test_cli_help_lists_options_and_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["data", "aishell", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--archive",
        "--out",
        "--force",
        "--language",
        "--dev-in-train",
        "--url",
        "--md5",
        "--timeout",
    ):
        assert flag in text
    assert "(default: Chinese)" in text and "(default: 10.0)" in text
    assert "openslr.org/resources/33/data_aishell.tgz" in text


def test_cli_runs(tmp_path: Path, capsys) -> None:
    args = _parser().parse_args(
        ["data", "aishell", "--archive", str(MINI), "--out", str(tmp_path / "o")]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "train     10 utterances" in out and "test       2 utterances" in out
    _check_complete(tmp_path / "o")


# ------------------------------------------------------------------ damaged archives (CLI)


def _damage(path: Path, fraction: float, length: int = 8192) -> None:
    """Overwrite ``length`` bytes with zeros at ``fraction`` of the file, in place."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * fraction)
    data[start : start + length] = bytes(length)
    path.write_bytes(bytes(data))


def test_cli_damaged_archive_is_an_error_and_a_fixed_one_repairs(tmp_path: Path, capsys) -> None:
    """8 kB zeroed in the middle of the real archive used to give exit 0 with 7 of 14 clips
    (stream tarfile stops at the zeroed header, the CRC was never checked) and the speaker marked
    done, and the repaired archive was then never read again."""
    from whispertune.cli import main

    archive = tmp_path / "data_aishell.tgz"
    archive.write_bytes(MINI.read_bytes())
    _damage(archive, 0.525)
    out = tmp_path / "out"
    args = ["data", "aishell", "--archive", str(archive), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert "data_aishell/wav/S0150.tar.gz: damaged" in err and "CRC check failed" in err
    assert not (out / STATE_DIR / "speakers/S0150.json").exists()
    assert not (out / "train.jsonl").exists()
    assert not [p for p in out.rglob("*") if p.is_file() and "wav" in p.parts]

    archive.write_bytes(MINI.read_bytes())  # the user fixes the archive in place
    assert main(args) == 0
    _check_complete(out)


def test_cli_damaged_transcript_is_an_error(tmp_path: Path, capsys) -> None:
    """Damage outside the speaker tarballs shows only in the outer gzip CRC, at the end."""
    from whispertune.cli import main

    archive = tmp_path / "data_aishell.tgz"
    archive.write_bytes(MINI.read_bytes())
    data = bytearray(archive.read_bytes())
    data[300:310] = bytes(10)  # inside the transcript's deflate data
    archive.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["data", "aishell", "--archive", str(archive), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "damaged outside the speaker tarballs" in err and "CRC check failed" in err
    assert not (out / "train.jsonl").exists()
