"""Join a Ray cluster (``--address auto``, ``ray://host:port``, a GCS address) or start a
local one sized to the machine, and the Ray Data settings every corpus job runs with.

Why here and not in each job: the two corpus commands must start, size and quiet Ray the
same way; and a process that already called ``ray.init`` (a notebook, the tests' shared
instance) is used as it is and left running, as a Ray user expects from a library.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from whispertune.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class ClusterOptions:
    """Where the job runs and how wide: the flags both corpus commands share."""

    address: str | None = field(
        default=None,
        metadata={
            "help": "Ray cluster to join: 'auto' (the cluster this machine belongs to), "
            "'ray://host:10001' (Ray Client) or a head's GCS host:port; default: start a "
            "local Ray instance sized to this machine"
        },
    )
    actors: int = field(
        default=0,
        metadata={
            "help": "decoding actors, each holding one copy of the model (0 = the cluster's "
            "CPUs divided by --threads-per-actor)"
        },
    )
    threads_per_actor: int = field(
        default=1,
        metadata={
            "help": "CPU threads of each actor's model (the CPUs Ray reserves for it); "
            "overrides --threads"
        },
    )
    gpus_per_actor: float = field(
        default=0.0,
        metadata={"help": "GPUs Ray reserves for each actor (e.g. 1, or 0.5 to share one)"},
    )


def require_ray() -> Any:
    """``import ray`` with the message that says which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"corpus jobs need the 'corpus' extra (Ray Data; {e.name} is missing): "
            "pip install 'whispertune[corpus]'"
        ) from e
    return ray


def _quiet_ray_data() -> None:
    """Our progress bar is the driver's; Ray Data's own bars and per-operator log lines
    would interleave with it."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def connect(address: str | None) -> Iterator[Any]:
    """Ray, initialized: an existing ``ray.init`` of this process is used as it is; else
    ``address`` is joined, or (None) a local instance is started with every CPU of the
    machine. Only an instance started here is shut down at the end."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot start or join Ray ({address or 'local'}): {e}") from e
        started = True
        logger.info("ray: %s", ray.cluster_resources())
    _quiet_ray_data()
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def plan_actors(ray: Any, options: ClusterOptions, threads_flag: int = 0) -> tuple[int, int]:
    """(actors, threads per actor): ``--actors`` or as many as the cluster's CPUs hold."""
    threads = max(1, options.threads_per_actor)
    if threads_flag and threads_flag != threads:
        logger.warning(
            "--threads %d is ignored: each actor gets --threads-per-actor (%d)",
            threads_flag,
            threads,
        )
    if options.actors > 0:
        return options.actors, threads
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // threads), threads


def runtime_env_vars() -> dict[str, str]:
    """Variables actors need to see what the driver sees (the model cache, the offline
    switches), passed through Ray's runtime environment."""
    names = ("WHISPERTUNE_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE")
    return {n: os.environ[n] for n in names if n in os.environ}
