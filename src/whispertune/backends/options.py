"""Which model to load and how: the options every command that decodes shares.

A dataclass (not three field helpers) so that the CLI flags, config files, the web UI's forms
and :func:`whispertune.api.load_model` read one definition of ``--model``, ``--backend``,
``--compute-type``, ``--threads`` and ``--device``. Importing it loads no runtime
(``--help`` stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from whispertune.models.sources import SourceOptions

BACKENDS = ("ct2", "transformers")


@dataclass
class ModelOptions(SourceOptions):
    """``--model`` (from SourceOptions, shared with export and demo) and how to run it."""

    backend: str = field(
        default="ct2", metadata={"help": "inference runtime", "choices": list(BACKENDS)}
    )
    compute_type: str = field(
        default="int8",
        metadata={
            "help": "ct2: int8 (on a CPU with native bf16 the encoder runs in bf16: faster "
            "and closer to float32), int8_float32 (int8 with CTranslate2's int8 encoder "
            "everywhere), float32, float16...; transformers: float32 or bfloat16 (int8 means "
            "float32 there)"
        },
    )
    threads: int = field(default=0, metadata={"help": "CPU threads (0 = up to 8)"})
    device: str = field(
        default="auto",
        metadata={
            "help": "auto (cuda when the backend sees a GPU: CTranslate2's CUDA device count, "
            "torch.cuda for transformers), cpu, cuda or cuda:N"
        },
    )
    device_index: int = field(
        default=0, metadata={"help": "which GPU with --device cuda (faster-whisper's device_index)"}
    )
