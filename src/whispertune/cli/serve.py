"""CLI: ``whispertune serve`` -> whispertune.serve (FastAPI app) under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

from whispertune import options
from whispertune.cli._command import needs_extra
from whispertune.network import is_loopback
from whispertune.serve.options import API_KEY_ENV, ServeOptions

DESCRIPTION = f"""\
Serve one model over HTTP: the seed's API (POST /recognition, /recognition_stream), OpenAI's
audio API (POST /v1/audio/transcriptions, /v1/audio/translations, GET /v1/models), a page to
upload or record audio (GET /), the API docs (GET /docs) and GET /health.

The model is loaded once, from any source --model takes (a transformers directory or a LoRA
adapter from 'whispertune train' is merged and converted to CTranslate2 once and cached).
Concurrent requests share decodes: the speech spans of requests that arrive together are
decoded in one batch (--max-batch; --no-batching serves one request at a time; the load
figures of both are in docs/server.md). Decode options (--beam-size, --language, --numerals,
--no-rescore...) are 'whispertune transcribe's and are the defaults of every request.

Limits: --max-upload-mb (413), --max-duration (400), --max-queue (503 + Retry-After). The
server listens on 127.0.0.1 unless --host says otherwise; --api-key (or ${API_KEY_ENV})
requires 'Authorization: Bearer KEY' on every route but /health, the page and /docs.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (seed API, OpenAI audio API, a web page)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.add_options(p, ServeOptions, config_file=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = options.from_args(ServeOptions, args)
    with needs_extra("serve", "the server"):
        import uvicorn

        from whispertune.serve.app import create_app
    from whispertune.api import load_model
    from whispertune.languages import resolved_language

    resolved_language(opts.decode.language)  # an unknown language fails before the load
    key = opts.resolved_api_key()
    if not is_loopback(opts.host) and key is None:
        print(
            f"warning: listening on {opts.host} without an API key: anyone who can reach "
            f"port {opts.port} can use this server (set --api-key or {API_KEY_ENV})",
            file=sys.stderr,
        )
    print(f"loading {opts.load.model} ({opts.load.backend})...", file=sys.stderr)
    model = load_model(opts.load)
    # the language tables load transformers on first use: not inside the first request
    resolved_language("en")
    app = create_app(model, opts)
    shown = f"[{opts.host}]" if ":" in opts.host else opts.host
    print(
        f"serving {model.name} on http://{shown}:{opts.port}  (page: /, API docs: /docs, "
        f"OpenAI base_url: http://{shown}:{opts.port}/v1)",
        file=sys.stderr,
        flush=True,
    )
    logging.getLogger("whispertune.serve").setLevel(logging.INFO)
    try:
        uvicorn.run(app, host=opts.host, port=opts.port, access_log=False, log_config=None,
                    timeout_graceful_shutdown=5)
    finally:
        model.close()
    return 0
