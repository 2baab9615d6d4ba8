"""Get a model to every actor of a corpus job: converted once on the driver, loaded once per
actor.

Why: a transformers checkpoint or a LoRA adapter is converted to CTranslate2 before it can be
decoded fast; done in each actor, N actors would convert N times, at once, into one cache. The
driver converts it (into the same cache ``load_model`` uses, so a later single-process run
reuses it) and actors load the CTranslate2 directory. On a cluster the converted folder lives
on the driver's disk, so it is also put in Ray's object store and written out once per node
by the first actor that does not find it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from whispertune.backends.options import ModelOptions

logger = logging.getLogger(__name__)


@dataclass
class ActorModel:
    """What an actor loads: ``options`` (its ``model`` a spec every node resolves, or a
    folder path) and, on a cluster, the folder's files in the object store (``files``)."""

    options: ModelOptions
    files: Any = None  # ray.ObjectRef of {relative path: bytes}, or None
    digest: str = ""


def prepare_model(options: ModelOptions, *, ship: bool) -> ActorModel:
    """Resolve ``options.model`` on the driver; convert it to CTranslate2 once when the
    ct2 backend needs it. ``ship``: also put a local folder in the object store for actors
    on other machines."""
    from whispertune.models.sources import resolve

    source = resolve(options.model)
    if source.kind == "builtin" or options.backend != "ct2":
        # built-in weights ship with the package: every node joins its own copy
        return ActorModel(options)
    from whispertune.backends.ct2 import ct2_model_dir

    folder = ct2_model_dir(source)  # converted and cached here, once, when not ct2 already
    if folder != source.path:
        logger.info("%s converted to CTranslate2 for the job: %s", options.model, folder)
    actor = ActorModel(replace(options, model=str(folder)))
    if ship:
        import ray

        files = {
            str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        digest = hashlib.sha256()
        for name, data in files.items():
            digest.update(name.encode())
            digest.update(hashlib.sha256(data).digest())
        actor.files = ray.put(files)
        actor.digest = digest.hexdigest()[:20]
    return actor


def local_model(actor: ActorModel) -> ModelOptions:
    """In an actor: ``actor.options``, its folder written out from the object store first
    when this machine does not have it (written under a temporary name, then renamed, so
    actors of one node never load a half-written copy)."""
    path = Path(actor.options.model)
    if actor.files is None or path.is_dir():
        return actor.options
    import ray

    target = Path(tempfile.gettempdir()) / "whispertune-corpus-models" / actor.digest
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{actor.digest}."))
        for name, data in ray.get(actor.files).items():
            out = staged / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        try:
            os.replace(staged, target)
        except OSError:  # another actor of this node got there first
            import shutil

            shutil.rmtree(staged, ignore_errors=True)
    return replace(actor.options, model=str(target))
