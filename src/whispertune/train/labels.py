"""Decoder targets for one sample, exactly as Whisper reads them at inference.

Every id comes from the tokenizer (never hard-coded), so the same code serves multilingual and
English-only models and any vocabulary size. The three forms:

- plain:       <|sot|> <|lang|> <|task|> <|notimestamps|> text <|eot|>
- timestamped: <|sot|> <|lang|> <|task|> <|t0|> text0 <|t1|> <|t1|> text1 <|t2|> ... <|eot|>
- no-speech:   <|sot|> <|nospeech|> <|eot|>   (Whisper's own no-speech token after SOT)

The returned ``labels`` start *after* <|sot|> (the model's decoder_start_token); the decoder
input is <|sot|> + labels[:-1].
"""

from __future__ import annotations

from dataclasses import dataclass

from whispertune.data.manifest import Sample
from whispertune.errors import UserError
from whispertune.languages import NO_SPACE_LANGUAGES, language_code
from whispertune.train.config import MAX_TIMESTAMP

TIME_PRECISION = 0.02


@dataclass(frozen=True)
class SpecialTokens:
    sot: int
    eot: int
    transcribe: int
    translate: int
    no_timestamps: int
    timestamp_begin: int
    no_speech: int | None
    multilingual: bool
    languages: dict[str, int]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokens:
        vocab = tokenizer.get_vocab()

        def tid(token: str) -> int | None:
            return vocab.get(token)

        no_ts = tid("<|notimestamps|>")
        ts0 = tid("<|0.00|>")
        if no_ts is None or ts0 is None:
            raise UserError("the tokenizer has no timestamp tokens; rebuild it with whispertune")
        languages = {
            tok[2:-2]: i
            for tok, i in vocab.items()
            if tok.startswith("<|")
            and tok.endswith("|>")
            and 2 <= len(tok) - 4 <= 3
            and tok[2:-2].isalpha()
            and tok[2:-2].islower()
        }
        return cls(
            sot=tid("<|startoftranscript|>"),
            eot=tid("<|endoftext|>"),
            transcribe=tid("<|transcribe|>"),
            translate=tid("<|translate|>"),
            no_timestamps=no_ts,
            timestamp_begin=ts0,
            no_speech=tid("<|nospeech|>") or tid("<|nocaptions|>"),
            multilingual=len(vocab) >= 51865 and len(languages) > 1,  # .en models: 51864
            languages=languages,
        )

    def timestamp(self, seconds: float) -> int:
        """The token of a time, snapped to Whisper's 0.02 s grid and clipped to 0..30 s."""
        seconds = min(max(seconds, 0.0), MAX_TIMESTAMP)
        return self.timestamp_begin + int(round(seconds / TIME_PRECISION))


def prefix_tokens(
    special: SpecialTokens, language: str | None, task: str, timestamps: bool
) -> list[int]:
    """<|sot|> [<|lang|> <|task|>] [<|notimestamps|>] for this model."""
    out = [special.sot]
    if special.multilingual:
        if language is None:
            raise UserError(
                "a language is needed for a multilingual model: set --language or "
                "the manifest's language field"
            )
        code = language_code(language)
        if code not in special.languages:
            raise UserError(f"the model has no language token for {language!r}")
        out += [
            special.languages[code],
            special.translate if task == "translate" else special.transcribe,
        ]
    if not timestamps:
        out.append(special.no_timestamps)
    return out


# Sample.extra[NO_SPEECH_LABEL] == EMPTY_TRANSCRIPT: a no-speech sample trained as an empty
# transcript after the usual prefix, instead of Whisper's no-speech token
NO_SPEECH_LABEL = "no_speech_label"
EMPTY_TRANSCRIPT = "empty"


def build_labels(
    sample: Sample,
    tokenizer,
    special: SpecialTokens,
    *,
    language: str | None,
    task: str = "transcribe",
    timestamps: bool = False,
    text: str | None = None,
) -> list[int]:
    """Decoder labels (without the leading <|sot|>) for one sample.

    ``timestamps`` is honoured only for samples with ``sentences``; ``text`` overrides the
    sample's transcript (after label normalization).
    """
    lang = sample.language or language
    if sample.is_no_speech and sample.extra.get(NO_SPEECH_LABEL) == EMPTY_TRANSCRIPT:
        # an empty transcript after the usual prefix (generated no-speech clips, half of them)
        return [*prefix_tokens(special, lang, task, False), special.eot][1:]
    if sample.is_no_speech:
        if special.no_speech is None:
            raise UserError("the model has no no-speech token; remove no-speech samples")
        return [special.no_speech, special.eot]
    use_ts = timestamps and bool(sample.sentences)
    ids = prefix_tokens(special, lang, task, use_ts)
    # Whisper writes a space before text in languages that separate words with spaces.
    space = "" if lang and language_code(lang) in NO_SPACE_LANGUAGES else " "
    if use_ts:
        for seg in sample.sentences:
            ids.append(special.timestamp(seg.start))
            ids += tokenizer.encode(space + seg.text.strip(), add_special_tokens=False)
            ids.append(special.timestamp(seg.end))
    else:
        content = sample.text if text is None else text
        ids += tokenizer.encode(space + content.strip(), add_special_tokens=False)
    ids.append(special.eot)
    return ids[1:]  # drop <|sot|>: it is the decoder start token
