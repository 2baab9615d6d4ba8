"""Corpus jobs on Ray Data: transcribe or evaluate many files with a pool of actors, each
holding one copy of the model (``whispertune corpus transcribe|evaluate``).

Ray is an optional extra (``pip install 'whispertune[corpus]'``): importing this package does
not import it; the jobs do, and say which extra to install when it is missing.
"""

from whispertune.corpus.evaluate import CorpusEvaluateOptions, evaluate_corpus
from whispertune.corpus.transcribe import (
    CorpusResult,
    CorpusTranscribeOptions,
    transcribe_corpus,
)

__all__ = [
    "CorpusEvaluateOptions",
    "CorpusResult",
    "CorpusTranscribeOptions",
    "evaluate_corpus",
    "transcribe_corpus",
]
