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
    "resolve_device",
]


def _gpu_count(backend: str) -> int:
    try:
        if backend == "ct2":
            import ctranslate2

            return ctranslate2.get_cuda_device_count()
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install is "no GPU" for auto, an error for cuda
        return 0


def resolve_device(device: str, backend: str = "ct2", device_index: int = 0) -> tuple[str, int]:
    """``(cpu|cuda, index)`` for ``--device auto|cpu|cuda|cuda:N`` as faster-whisper users
    expect: ``auto`` takes the GPU when the runtime that will decode sees one (CTranslate2 and
    torch are built separately, so one may see a GPU the other cannot use). Asking for ``cuda``
    where there is none is an error now, not a crash in the middle of loading."""
    name, _, idx = device.partition(":")
    if name not in ("auto", "cpu", "cuda") or (idx and not idx.isdigit()):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    index = int(idx) if idx else device_index
    if name == "cpu":
        return "cpu", 0
    count = _gpu_count(backend)
    if name == "auto":
        return ("cuda", index) if count > index else ("cpu", 0)
    if count <= index:
        runtime = "CTranslate2" if backend == "ct2" else "torch"
        raise UserError(
            f"--device {device} (index {index}): {runtime} sees {count} CUDA device(s); "
            "use --device cpu, or install a CUDA build of it"
        )
    return "cuda", index


def create_transcriber(
    model: str | ModelOptions,
    backend: str = "ct2",
    *,
    compute_type: str = "int8",
    threads: int = 0,
    device: str = "cpu",
    workers: int = 0,
    device_index: int = 0,
) -> Transcriber:
    """A backend for any model spec (see whispertune.models.sources), or for ``ModelOptions``.

    ``workers`` (ct2; 0 = auto) is how many parts of a batch are decoded at once, sharing the
    ``threads`` (CTranslate2's inter_threads and intra_threads).
    """
    if isinstance(model, ModelOptions):
        o = model
        model, backend, compute_type = o.model, o.backend, o.compute_type
        threads, device, device_index = o.threads, o.device, o.device_index
    device, device_index = resolve_device(device, backend, device_index)
    if backend == "ct2":
        from whispertune.backends.ct2 import CT2Transcriber

        return CT2Transcriber(
            model,
            compute_type=compute_type,
            threads=threads,
            device=device,
            device_index=device_index,
            workers=workers,
        )
    if backend == "transformers":
        from whispertune.backends.hf import HFTranscriber

        dtype = compute_type if compute_type in ("float32", "bfloat16", "float16") else "float32"
        torch_device = f"cuda:{device_index}" if device == "cuda" else "cpu"
        return HFTranscriber(model, dtype=dtype, threads=threads, device=torch_device)
    raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
