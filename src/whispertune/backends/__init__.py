"""Inference backends behind one interface (``base.Transcriber``): CTranslate2 and transformers.

:func:`create_transcriber` is the one place that picks and builds a backend; ``base`` holds the
interface only, so the backends import it and it imports none of them.
"""

from __future__ import annotations

from whispertune.backends.base import DecodeOptions, Transcriber, Transcript
from whispertune.backends.options import BACKENDS, ModelOptions
from whispertune.errors import UserError

__all__ = [
    "BACKENDS",
    "DecodeOptions",
    "ModelOptions",
    "Transcriber",
    "Transcript",
    "create_transcriber",
]


def create_transcriber(
    model: str | ModelOptions,
    backend: str = "ct2",
    *,
    compute_type: str = "int8",
    threads: int = 0,
    device: str = "cpu",
    workers: int = 0,
) -> Transcriber:
    """A backend for any model spec (see whispertune.models.sources), or for ``ModelOptions``.

    ``workers`` (ct2; 0 = auto) is how many parts of a batch are decoded at once, sharing the
    ``threads`` (CTranslate2's inter_threads and intra_threads).
    """
    if isinstance(model, ModelOptions):
        o = model
        model, backend, compute_type = o.model, o.backend, o.compute_type
        threads, device = o.threads, o.device
    if backend == "ct2":
        from whispertune.backends.ct2 import CT2Transcriber

        return CT2Transcriber(
            model, compute_type=compute_type, threads=threads, device=device, workers=workers
        )
    if backend == "transformers":
        from whispertune.backends.hf import HFTranscriber

        dtype = compute_type if compute_type in ("float32", "bfloat16", "float16") else "float32"
        return HFTranscriber(model, dtype=dtype, threads=threads, device=device)
    raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
