"""--device auto|cpu|cuda|cuda:N: what a user of faster-whisper types, resolved before loading."""

from __future__ import annotations

import subprocess
import sys

import ctranslate2
import pytest
import torch

from whispertune.backends import create_transcriber, resolve_device
from whispertune.errors import UserError


def test_cpu_and_auto_follow_what_the_runtime_sees():
    assert resolve_device("cpu", "ct2") == ("cpu", 0)
    gpus = ctranslate2.get_cuda_device_count()
    assert resolve_device("auto", "ct2") == (("cuda", 0) if gpus else ("cpu", 0))
    torch_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert resolve_device("auto", "transformers")[0] == ("cuda" if torch_gpus else "cpu")


def test_an_index_in_the_name_wins_over_device_index():
    gpus = ctranslate2.get_cuda_device_count()
    if gpus < 2:
        with pytest.raises(UserError, match=r"index 1\): CTranslate2 sees \d CUDA device"):
            resolve_device("cuda:1", "ct2", device_index=0)
    else:
        assert resolve_device("cuda:1", "ct2", device_index=0) == ("cuda", 1)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda0", "mps"])
def test_an_unknown_device_is_a_clear_error(bad):
    with pytest.raises(UserError, match="unknown device"):
        resolve_device(bad)


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="this machine has a GPU")
def test_cuda_without_a_gpu_fails_before_the_model_is_read(tmp_path):
    # the model does not exist: the device is checked first, so the message is about the GPU
    with pytest.raises(UserError, match="sees 0 CUDA device"):
        create_transcriber(str(tmp_path / "no-model"), device="cuda")


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="this machine has a GPU")
def test_cli_cuda_without_a_gpu_is_an_error_line(tmp_path, make_wav):
    clip = make_wav(tmp_path / "in" / "tone.wav", 1.0)
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "whispertune",
            "transcribe",
            str(clip),
            "--device",
            "cuda",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "error: --device cuda (index 0): CTranslate2 sees 0 CUDA device(s)" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() or not list(out.iterdir())
