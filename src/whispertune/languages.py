"""Language names and codes as Whisper knows them ("Chinese", "chinese", "zh" all mean zh).

The tables are transformers' (read on first use, not at import: importing transformers takes
a second, and ``whispertune COMMAND --help`` imports this module through the options).
"""

from __future__ import annotations

import functools

from whispertune.errors import UserError

# Languages written without spaces between words: scored by characters (CER), and their
# transcripts are not preceded by a space token in Whisper's output.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "ko", "th", "lo", "my", "km", "bo", "yue"})


class UnknownLanguageError(UserError):
    pass


@functools.cache
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    """Whisper's code -> name and name/alias -> code tables."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    return LANGUAGES, TO_LANGUAGE_CODE


def language_code(name: str) -> str:
    """Whisper's code (``zh``) for a code, an English name or an alias, case-insensitively."""
    key = name.strip().lower()
    languages, to_code = _tables()
    if key in languages:
        return key
    if key in to_code:
        return to_code[key]
    raise UnknownLanguageError(
        f"unknown language {name!r}: use a Whisper language code (zh, en, de, ...) or its "
        "English name (Chinese, English, German, ...)"
    )


def language_name(code_or_name: str) -> str:
    """The English name Whisper uses (``chinese``) for a code or name."""
    return _tables()[0][language_code(code_or_name)]


def is_known_language(name: str) -> bool:
    try:
        language_code(name)
    except UnknownLanguageError:
        return False
    return True


def resolved_language(language: str | None) -> str | None:
    """A ``--language`` value as a code, or None (detect it) for none and "auto": the one
    place every command, the server and the UIs read the option. An unknown name fails here,
    before any model loads."""
    if not language or language.strip().lower() == "auto":
        return None
    return language_code(language)
