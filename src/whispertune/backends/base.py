"""The one interface every backend implements, so evaluation, the server and the UIs never care
which runtime decodes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from whispertune.errors import UserError

BACKENDS = ("ct2", "transformers")


@dataclass
class DecodeOptions:
    """How to decode: the same options for every backend."""

    language: str | None = field(
        default=None,
        metadata={
            "help": "language code or name (zh, Chinese, en, ...); default: the manifest's "
            "per-sample language, else detected"
        },
    )
    task: str = field(
        default="transcribe",
        metadata={
            "help": "transcribe, or translate to English",
            "choices": ["transcribe", "translate"],
        },
    )
    beam_size: int = field(default=5, metadata={"help": "beam width (1 = greedy)"})
    batch_size: int = field(default=8, metadata={"help": "clips decoded together"})
    max_new_tokens: int = field(
        default=224, metadata={"help": "longest output per clip, in tokens"}
    )
    initial_prompt: str | None = field(
        default=None, metadata={"help": "text given as previous context (spellings, names)"}
    )


@dataclass
class Transcript:
    """A decoded clip."""

    text: str
    language: str | None = None
    language_probability: float | None = None
    tokens: list[int] = field(default_factory=list)
    no_speech_prob: float | None = None


class Transcriber(ABC):
    """Decodes clips of up to 30 s; long audio is cut into such clips before it gets here."""

    name: str = ""
    multilingual: bool = True

    @abstractmethod
    def transcribe_clips(
        self,
        audios: Sequence[np.ndarray],
        options: DecodeOptions,
        languages: Sequence[str | None] | None = None,
    ) -> list[Transcript]:
        """One Transcript per clip; ``languages`` (codes) override ``options.language`` per clip."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release the runtime's memory and threads."""


def create_transcriber(
    model: str,
    backend: str = "ct2",
    *,
    compute_type: str = "int8",
    threads: int = 0,
    device: str = "cpu",
) -> Transcriber:
    """A backend for any model spec (see whispertune.models.sources)."""
    if backend == "ct2":
        from whispertune.backends.ct2 import CT2Transcriber

        return CT2Transcriber(model, compute_type=compute_type, threads=threads, device=device)
    if backend == "transformers":
        from whispertune.backends.hf import HFTranscriber

        dtype = compute_type if compute_type in ("float32", "bfloat16", "float16") else "float32"
        return HFTranscriber(model, dtype=dtype, threads=threads, device=device)
    raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
