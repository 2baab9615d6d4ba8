"""What the machine can do, asked once."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX); without them bf16 is emulated and
    slower than fp32."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 1 << 20


@lru_cache(maxsize=1)
def return_freed_activations_to_the_os() -> bool:
    """Fix glibc's mmap threshold at 1 MiB, so activation buffers go back to the OS when freed.

    Why: glibc raises its mmap threshold each time a large mmapped block is freed (up to
    32 MiB), after which a training step's activations come from the heap, and the heap keeps
    what the step freed. Measured on whisper-base LoRA, batch 8, CPU: peak RSS 12.6 GB with
    333 MB of live tensors; with the threshold fixed, 6.1 GB, and 2.5x the samples/s. On the
    encoder cache too (issue 26): there the heap grew from 4.7 to 7.1 GB over two steps of
    the default recipe (batch 8) whose live tensors were 3.9 GB, and the default run peaked
    at 10 GB; with the threshold fixed and the top layers recomputed, under 2 GB. Skipped
    where the user set MALLOC_MMAP_THRESHOLD_ and off glibc. Returns whether it was applied.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if loaded_caching_allocator():  # glibc's heap is not the one in use
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


# Caching allocators the train command restarts itself with, best first, as
# ctypes.util.find_library names them.
CACHING_ALLOCATORS = ("tcmalloc_minimal", "tcmalloc", "jemalloc")
PRELOADED = "WHISPERTUNE_PRELOADED_ALLOCATOR"  # set in the restarted process
_ALLOCATOR_ENV = {
    # tcmalloc reports every allocation over 1 GiB on stderr; a step's logits can be one
    "tcmalloc": {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)},
    # jemalloc's default returns freed pages to the OS within seconds: the faults again
    "jemalloc": {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"},
}


@lru_cache(maxsize=1)
def loaded_caching_allocator() -> str | None:
    """The caching allocator (tcmalloc, jemalloc) this process runs on, if any: fixed when
    the process starts, so read once (the trainer asks around every validation)."""
    try:
        maps = open("/proc/self/maps", encoding="utf-8").read()
    except OSError:
        return None
    for name in _ALLOCATOR_ENV:
        if f"/lib{name}" in maps:
            return name
    return None


def caching_allocator_library() -> str | None:
    """The library name (for LD_PRELOAD) of a caching allocator the system has, if any."""
    import ctypes.util

    for name in CACHING_ALLOCATORS:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def caching_allocator_env(environ: dict[str, str]) -> dict[str, str] | None:
    """``environ`` with a caching allocator preloaded, for a new process; None where the
    system has none (or off Linux).

    Why: a training step frees and allocates gigabytes of activations. glibc either returns
    them to the OS (the mmap threshold fixed above), so the kernel zeroes every page again
    each step (a quarter of a step's CPU time), or keeps them in a heap whose holes grow
    over a run (4.1 GB at the end of a default run that started under 3). tcmalloc and
    jemalloc (configured to keep freed pages) reuse them: one step of the default recipe
    1.5x faster at about the same peak (docs/benchmarks.md).
    """
    import sys

    if not sys.platform.startswith("linux"):
        return None
    library = caching_allocator_library()
    if library is None:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join(p for p in (library, environ.get("LD_PRELOAD")) if p)
    for name, settings in _ALLOCATOR_ENV.items():
        if name in library:
            for key, value in settings.items():
                env.setdefault(key, value)
    env[PRELOADED] = library
    return env


def rerun_with_caching_allocator(argv: list[str]) -> None:
    """Replace this process by ``python argv`` on a caching allocator (same PID, so process
    managers and torchrun see no difference); returns where there is none to run on, one is
    loaded already, or a restart already happened. Only a command line can do this: the
    allocator must be loaded before the interpreter starts."""
    import logging
    import os
    import sys

    if PRELOADED in os.environ or loaded_caching_allocator():
        return
    env = caching_allocator_env(dict(os.environ))
    if env is None:
        logging.getLogger(__name__).info(
            "no tcmalloc or jemalloc on this system: glibc's allocator (a training step is "
            "about 1.5x faster on tcmalloc: apt install libtcmalloc-minimal4)"
        )
        return
    if not sys.executable:  # an embedded interpreter: nothing to restart
        return
    logging.getLogger(__name__).info("restarting on %s", env[PRELOADED])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv], env)
    except OSError as e:  # carry on where we are: slower, not broken
        logging.getLogger(__name__).warning("could not restart on %s: %s", env[PRELOADED], e)


def release_free_memory() -> None:
    """Hand the free memory a caching allocator holds back to the OS (a no-op on glibc).

    Why: tcmalloc keeps what a training step freed for the next step, so a validation pass
    (other sizes: a batch of whole-encoder activations, generate's caches) would otherwise
    add its own memory on top of the steps' (the trainer calls this around validations).
    """
    import ctypes

    allocator = loaded_caching_allocator()
    if allocator is None:
        return
    process = ctypes.CDLL(None)
    try:
        if allocator == "tcmalloc":
            process.MallocExtension_ReleaseFreeMemory()
        else:  # jemalloc: purge every arena (MALLCTL_ARENAS_ALL)
            process.mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))
    except AttributeError:  # a build without the extension API: nothing to ask
        pass
