"""Did a fine-tune help, and did it break anything? The checks of the fine-tuning recipe, for
the base model and each model given, in one table:

    python benchmarks/recipe_check.py --model runs/x/best [--model merged/ ...] [--skip-base]
        [--numerals hanzi] [--no-rescore] [--only test longform]

- test CER: the AISHELL test split (W0441-W0496 of ../shared/data/zh/aishell_s0150), ct2 int8
  beam 5 and transformers greedy (``whispertune evaluate``);
- forgetting: English WER on ../shared/data/en/ljspeech, the model asked for English;
- hallucination: 20 generated clips of silence and noise (digital silence, -50 dBFS white
  noise, pink noise at -50/-35 dBFS, 10-30 s). Counted clean when no text comes out: once
  through ``transcribe`` as users run it (VAD on), and once decoding the raw 30 s windows with
  the VAD and the silence gate off (the model's own no-speech behaviour, guards on);
- long-form CER: ../shared/data/longform (3.6 min of the test speaker), ``transcribe`` defaults.

Models load as every command loads them: builtin:base, an adapter directory (merged on the
fly), a transformers or CTranslate2 directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
AISHELL = DATA / "zh" / "aishell_s0150" / "manifest.jsonl"
LJSPEECH = DATA / "en" / "ljspeech" / "manifest.jsonl"
LONGFORM = DATA / "longform" / "manifest.jsonl"
SR = 16000


def test_manifest(tmp: Path) -> Path:
    """The last 56 lines of the AISHELL manifest, paths made absolute."""
    lines = [json.loads(x) for x in AISHELL.read_text(encoding="utf-8").splitlines()]
    out = tmp / "aishell_test.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for row in lines[320:]:
            row["audio"]["path"] = str(AISHELL.parent / row["audio"]["path"])
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def noise_clips(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """20 clips: 5 each of digital silence, white noise at -50 dBFS, pink noise at -50 and
    -35 dBFS; lengths 10-30 s."""
    rng = np.random.default_rng(seed)
    clips = []
    for kind in ("silence", "white-50", "pink-50", "pink-35"):
        for i in range(5):
            n = int(SR * (10 + 5 * i))
            if kind == "silence":
                x = np.zeros(n, np.float32)
            elif kind.startswith("white"):
                x = rng.standard_normal(n)
            else:  # pink: 1/f power, shaped in the frequency domain
                spectrum = np.fft.rfft(rng.standard_normal(n))
                f = np.arange(len(spectrum), dtype=np.float64)
                f[0] = 1.0
                x = np.fft.irfft(spectrum / np.sqrt(f), n)
            if kind != "silence":
                dbfs = -float(kind.split("-")[1])
                x = x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20)
            clips.append((f"{kind}-{n // SR}s", x.astype(np.float32)))
    return clips


def score(
    model: str,
    manifest: Path,
    backend: str,
    beam: int,
    language: str | None,
    numerals: str,
    rescore: bool = True,
) -> float:
    from whispertune.evaluate import EvaluateOptions, evaluate

    options = EvaluateOptions(manifest=manifest, model=model, backend=backend)
    options.load.compute_type = "int8" if backend == "ct2" else "float32"
    options.decode.beam_size = beam
    if beam == 1:  # plain greedy, as the baseline: no temperature fallback
        options.decode.temperatures = [0.0]
    options.decode.language = language
    options.decode.numerals = numerals
    options.decode.rescore = rescore
    return 100 * evaluate(options).error_rate


def hallucinations(model: str) -> tuple[int, int, list[str]]:
    """Clips (of 20) with no text: through transcribe (VAD on), and with the VAD off."""
    from whispertune.backends import create_transcriber
    from whispertune.transcribe import LongFormOptions, Pipeline

    transcriber = create_transcriber(model, "ct2")
    clean = {True: 0, False: 0}
    texts = []
    for vad in (True, False):
        # VAD off: the silence gate (a VAD check per window) off too, so the model decides
        long_form = LongFormOptions(vad=vad, silence_gate=vad)
        pipeline = Pipeline(transcriber, long_form=long_form, model=model)
        for name, audio in noise_clips():
            text = pipeline.transcribe(audio).text.strip()
            clean[vad] += not text
            if text and not vad:
                texts.append(f"{name}: {text[:40]}")
    transcriber.close()
    return clean[True], clean[False], texts


def longform_cer(model: str, numerals: str, rescore: bool = True) -> float:
    from whispertune.backends import DecodeOptions, create_transcriber
    from whispertune.evaluate import score_pairs
    from whispertune.text import normalize
    from whispertune.transcribe import Pipeline

    row = json.loads(LONGFORM.read_text(encoding="utf-8").splitlines()[0])
    transcriber = create_transcriber(model, "ct2")
    decode = DecodeOptions(language="zh", numerals=numerals, rescore=rescore)
    pipeline = Pipeline(transcriber, decode, model=model)
    text = pipeline.transcribe(LONGFORM.parent / row["audio"]["path"]).text
    transcriber.close()
    s, d, i, n, _ = score_pairs([normalize(row["sentence"])], [normalize(text)], "cer")
    return 100 * (s + d + i) / n


CHECKS = ("test", "english", "noise", "longform")


def check(
    model: str,
    tmp: Path,
    checks: tuple[str, ...] = CHECKS,
    numerals: str = "auto",
    rescore: bool = True,
) -> dict:
    t = time.perf_counter()
    row: dict = {
        "model": model
        + ("" if numerals == "auto" else f" --numerals {numerals}")
        + ("" if rescore else " --no-rescore")
    }
    if "test" in checks:
        test = test_manifest(tmp)
        row["test CER ct2 beam5"] = score(model, test, "ct2", 5, None, numerals, rescore)
        row["test CER hf greedy"] = score(model, test, "transformers", 1, None, numerals, rescore)
    if "english" in checks:
        row["ljspeech WER (en)"] = score(model, LJSPEECH, "ct2", 5, "en", numerals)
    texts: list[str] = []
    if "noise" in checks:
        vad_clean, raw_clean, texts = hallucinations(model)
        row["silence/noise clean, VAD"] = f"{vad_clean}/20"
        row["silence/noise clean, no VAD"] = f"{raw_clean}/20"
    if "longform" in checks:
        row["long-form CER"] = longform_cer(model, numerals, rescore)
    row["minutes"] = (time.perf_counter() - t) / 60
    row["texts on noise"] = texts
    return row


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="model to check (repeat)")
    parser.add_argument("--skip-base", action="store_true", help="do not check builtin:base")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=CHECKS,
        default=list(CHECKS),
        help="run only these checks (english/noise do not touch the test speaker's audio: "
        "use them while choosing settings)",
    )
    parser.add_argument(
        "--numerals",
        choices=["auto", "hanzi", "keep"],
        default="auto",
        help="how Mandarin output writes numbers (auto: as each model records; the base "
        "model then keeps Whisper's digits, while AISHELL's references write them out)",
    )
    parser.add_argument(
        "--no-rescore",
        action="store_true",
        help="decode Mandarin without the word-model rescoring (as Whisper's beam has it)",
    )
    args = parser.parse_args()
    models = ([] if args.skip_base else ["builtin:base"]) + args.model
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            check(m, Path(tmp), tuple(args.only), args.numerals, not args.no_rescore)
            for m in models
        ]
    keys = [k for k in rows[0] if k != "texts on noise"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        for text in r["texts on noise"]:
            print(f"{r['model']}: text on {text}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
