"""Encoder outputs computed once per clip, for training the decoder alone.

Why: every clip passes Whisper's encoder as a padded 30 s window, forward and backward, and
that is most of the cost of a training step. When the encoder is frozen (decoder-only LoRA or
full fine-tuning with a frozen encoder) and the audio is not augmented, its output for a clip
never changes: computing it once and reading it back each epoch leaves only the (small)
decoder to run. Outputs are stored fp16 in a memory-mapped file (1500 x d_model per clip).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from whispertune.progress import check_cancel
from whispertune.train.packing import GAPS, PARTS

logger = logging.getLogger(__name__)


class _Captured(Exception):
    """Stops the encoder once the input of its first trained layer is captured: the layers
    above it would run (4 of whisper-base's 6 by default) only for their output to be thrown
    away."""


def frozen_part(run: Callable, encoder, features: torch.Tensor, trained_layers: int):
    """What ``encoder``'s frozen part makes of ``features``: the input of its last
    ``trained_layers`` layers, only the layers below them run (the hook that captures it
    ends the pass); with 0, its output. ``run`` is the encoder's forward (the module, or the
    forward a wrapper of it calls)."""
    if not trained_layers:
        return run(features).last_hidden_state
    captured: list[torch.Tensor] = []

    def capture(module, args):
        captured.append(args[0])
        raise _Captured

    hook = encoder.layers[-trained_layers].register_forward_pre_hook(capture)
    try:
        run(features)
    except _Captured:
        pass
    finally:
        hook.remove()
    return captured.pop()


class EncoderCache:
    def __init__(self, path: Path, count: int, frames: int, width: int) -> None:
        self.path = path
        self.shape = (count, frames, width)
        self._array: np.memmap | None = None

    @property
    def array(self) -> np.memmap:
        if self._array is None:  # opened lazily: works in DataLoader worker processes
            self._array = np.memmap(self.path, dtype=np.float16, mode="r", shape=self.shape)
        return self._array

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.array[index], dtype=np.float32)

    def __getstate__(self):
        return {"path": self.path, "shape": self.shape, "_array": None}

    def __setstate__(self, state):
        self.path, self.shape, self._array = state["path"], state["shape"], None


def cache_key(model_dir: Path, samples: list, n_mels: int, trained_layers: int = 0) -> str:
    digest = hashlib.sha256()
    if trained_layers:  # a different tensor: the input of the last N layers
        digest.update(f"input-of-last-{trained_layers}".encode())
    for name in ("model.safetensors", "config.json"):
        p = Path(model_dir) / name
        if p.exists():
            st = p.stat()
            digest.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    for s in samples:
        for part in s.extra.get(PARTS, [s]):  # a joined window: every clip in it
            digest.update(f"{part.audio_path}:{part.start_time}:{part.end_time}".encode())
        if PARTS in s.extra:
            digest.update(f"|{s.extra.get(GAPS)}".encode())  # the pauses change the audio too
    digest.update(str(n_mels).encode())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def build_encoder_cache(
    encoder: torch.nn.Module,
    dataset,
    directory: Path,
    key: str,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    trained_layers: int = 0,
    cancel: threading.Event | None = None,
) -> EncoderCache:
    """Encode every clip of ``dataset`` (unaugmented) into ``directory/encoder-KEY.f16``.

    With ``trained_layers`` N > 0 the cache holds what enters the last N layers (those are
    trained), not the encoder's output, and only the layers below them run.

    A finished cache is reused; a partial one (killed run) is rebuilt: completion is marked by
    a sidecar JSON written after the data is flushed. A set ``cancel`` stops at the next batch
    with :class:`~whispertune.progress.Cancelled`, the partial file removed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data_path = directory / f"encoder-{key}.f16"
    meta_path = directory / f"encoder-{key}.json"
    n = len(dataset)
    d_model = encoder.config.d_model
    frames = encoder.config.max_source_positions
    if meta_path.is_file() and data_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("shape") == [n, frames, d_model]:
            logger.info("reusing encoder cache %s", data_path)
            return EncoderCache(data_path, n, frames, d_model)
    # per-process temporary name: two runs (or two nodes on a shared filesystem, where pids
    # can coincide) may build the same shared cache at once
    writer = f"{socket.gethostname()}-{os.getpid()}"
    tmp = data_path.with_name(f"{data_path.name}.tmp{writer}")
    out = np.memmap(tmp, dtype=np.float16, mode="w+", shape=(n, frames, d_model))
    encoder.eval()
    param = next(encoder.parameters())
    try:
        for i in range(0, n, batch_size):
            check_cancel(cancel, "encoder cache")
            idx = list(range(i, min(n, i + batch_size)))
            feats = np.stack([dataset.features(dataset.audio(j)) for j in idx])
            features = torch.from_numpy(feats).to(param.device, param.dtype)
            hidden = frozen_part(encoder, encoder, features, trained_layers)
            out[idx[0] : idx[-1] + 1] = hidden.float().cpu().numpy().astype(np.float16)
            if progress is not None:
                progress(idx[-1] + 1, n)
    except BaseException:
        del out
        tmp.unlink(missing_ok=True)  # a cancelled or failed build leaves no partial file
        raise
    out.flush()
    del out
    os.replace(tmp, data_path)
    meta_tmp = meta_path.with_name(f"{meta_path.name}.tmp{writer}")
    meta_tmp.write_text(json.dumps({"shape": [n, frames, d_model]}))
    os.replace(meta_tmp, meta_path)
    return EncoderCache(data_path, n, frames, d_model)


class CachedDataset(torch.utils.data.Dataset):
    """The same items as the speech dataset, with encoder outputs in place of features."""

    def __init__(self, dataset, cache: EncoderCache) -> None:
        self.dataset = dataset
        self.cache = cache

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.dataset.epoch = value

    def __getitem__(self, index: int) -> dict:
        return {
            "index": index,
            "encoder_hidden": self.cache[index],
            "labels": self.dataset.labels(index),
        }
