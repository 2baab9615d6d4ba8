"""The caching allocator ``whispertune train`` restarts itself on: found where the system has
one, preloaded for the new process only, never a restart loop. (The restart itself runs in
tests/train/test_training.py's kill-and-resume test, whose two runs use the two allocators.)"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from whispertune.train import hardware


def test_environment_preloads_the_first_allocator_found(monkeypatch):
    found = {"jemalloc": "libjemalloc.so.2"}
    monkeypatch.setattr(ctypes.util, "find_library", found.get)
    env = hardware.caching_allocator_env({"LD_PRELOAD": "libother.so", "PATH": "/bin"})
    assert env is not None
    assert env["LD_PRELOAD"] == "libjemalloc.so.2:libother.so"  # the user's preload kept
    assert env["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # keeps freed pages
    assert env[hardware.PRELOADED] == "libjemalloc.so.2" and env["PATH"] == "/bin"
    found["tcmalloc_minimal"] = "libtcmalloc_minimal.so.4"  # preferred over jemalloc
    env = hardware.caching_allocator_env({"MALLOC_CONF": "mine"})
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4" and env["MALLOC_CONF"] == "mine"
    assert "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD" in env


def test_no_allocator_no_restart(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.delenv(hardware.PRELOADED, raising=False)
    assert hardware.caching_allocator_env(dict(os.environ)) is None
    hardware.rerun_with_caching_allocator(["-c", "pass"])  # returns: nothing to run on


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or hardware.caching_allocator_library() is None,
    reason="no tcmalloc or jemalloc on this system",
)
def test_restart_loads_the_allocator_once():
    """A real restart: the new process runs on the allocator, and restarting it again is a
    no-op (the marker), so a command never loops."""
    code = (
        "import sys; from whispertune.train import hardware; "
        "print(hardware.loaded_caching_allocator(), flush=True); "
        "hardware.rerun_with_caching_allocator(sys.orig_argv[1:]); print('returned')"
    )
    env = {k: v for k, v in os.environ.items() if k != hardware.PRELOADED}
    restart = (
        "from whispertune.train import hardware; "
        f"hardware.rerun_with_caching_allocator(['-c', {code!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", restart], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    library = hardware.caching_allocator_library()
    expected = "tcmalloc" if "tcmalloc" in library else "jemalloc"
    assert out.stdout.split() == [expected, "returned"]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or hardware.caching_allocator_library() is None,
    reason="no tcmalloc or jemalloc on this system",
)
def test_free_memory_is_kept_until_released():
    """On the caching allocator, freed tensors stay in the process (the next step reuses them,
    no page faults) until ``release_free_memory``, which the trainer calls around validations."""
    code = (
        "import psutil, torch; from whispertune.train import hardware\n"
        "rss = lambda: psutil.Process().memory_info().rss >> 20\n"
        "x = [torch.ones(25_000_000) for _ in range(4)]\n"
        "held = rss(); del x; kept = rss(); hardware.release_free_memory()\n"
        "print(held, kept, rss())\n"
    )
    env = hardware.caching_allocator_env(dict(os.environ))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    held, kept, released = map(int, out.stdout.split())
    assert kept > held - 50  # 400 MB freed, still resident
    assert released < held - 300  # handed back
