"""``whispertune serve`` options: the model, the decode defaults and the server's limits.

One dataclass, so that the flags, a ``--config`` YAML file and :func:`whispertune.serve.create_app`
read the same defaults. The decode and long-form options are ``whispertune transcribe``'s own:
a request that sets no field gets exactly the text ``whispertune transcribe`` writes with the
same flags (the server's one different default: ``--first-span-seconds 10``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from whispertune.backends import DecodeOptions, ModelOptions
from whispertune.transcribe import STREAM_FIRST_SPAN_SECONDS, LongFormOptions

API_KEY_ENV = "WHISPERTUNE_API_KEY"


def default_max_queue() -> int:
    """Requests admitted at once (decoding or waiting): 16 per CPU core, at least 32.

    An admitted request holds its upload on disk and at most one VAD pass of samples (4 min,
    16 MB) in memory while it decodes, so 32 waiting requests cost well under 1 GB; past the
    limit a client gets 503 + Retry-After rather than the server growing without bound.
    """
    return max(32, 16 * (os.cpu_count() or 1))


@dataclass
class ServeOptions:
    load: ModelOptions = field(default_factory=ModelOptions)
    host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "address to listen on; 0.0.0.0 serves every network interface (then set "
            "--api-key: anyone who can reach the port can use the server)"
        },
    )
    port: int = field(default=5000, metadata={"help": "TCP port"})
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "require 'Authorization: Bearer KEY' on every route but /health, the page "
            f"and the API docs (default: ${API_KEY_ENV}; none = open)"
        },
    )
    max_upload_mb: float = field(
        default=100.0,
        metadata={"help": "largest upload in MB, checked while it is read (413 past it)"},
    )
    max_duration: float = field(
        default=4 * 3600.0,
        metadata={"help": "longest audio in seconds (400 past it, checked as it decodes)"},
    )
    max_queue: int = field(
        default=0,
        metadata={
            "help": "requests admitted at once, decoding or waiting; past it 503 with "
            "Retry-After (0 = 16 per CPU core, at least 32)"
        },
    )
    batching: bool = field(
        default=True,
        metadata={
            "help": "decode the speech spans of concurrent requests together in one batch "
            "(--no-batching: one request at a time, as the seed's server; for comparison)"
        },
    )
    max_batch: int = field(
        default=8,
        metadata={"help": "most 30 s windows, from all requests, decoded in one batch"},
    )
    batch_wait_ms: float = field(
        default=50.0,
        metadata={
            "help": "how long an idle model waits for more windows before decoding a batch "
            "that is not full (while it decodes, windows gather anyway); requests sent "
            "together arrive tens of ms apart, and a window decoded alone keeps one core of "
            "a 2-core CPU idle for its whole decode"
        },
    )
    batch_fill_ms: float = field(
        default=200.0,
        metadata={
            "help": "how long to wait for as many requests as the previous batch served "
            "(clients that got their answers together send again together) before decoding "
            "a smaller batch"
        },
    )
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    # A file's first span is cut at 10 s (``--first-span-seconds``): the first streamed
    # segment then waits for a short decode instead of a 30 s span's; the text of every
    # route equals ``whispertune transcribe --first-span-seconds 10``.
    long_form: LongFormOptions = field(
        default_factory=lambda: LongFormOptions(first_span_seconds=STREAM_FIRST_SPAN_SECONDS)
    )

    def resolved_api_key(self) -> str | None:
        """The key from the option, else from the environment; an empty string means none."""
        key = self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV)
        return key or None

    def resolved_max_queue(self) -> int:
        return self.max_queue if self.max_queue > 0 else default_max_queue()
