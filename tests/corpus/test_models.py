"""A model folder on the driver's disk reaches actors on machines that do not have it."""

from __future__ import annotations

import shutil
from pathlib import Path

from whispertune.backends.options import ModelOptions
from whispertune.corpus.models import local_model, prepare_model


def test_a_shipped_model_folder_is_written_out_where_it_is_missing(
    ray_address, tiny_model, tmp_path
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model / "ct2", folder)
    shipped = prepare_model(ModelOptions(model=str(folder)), ship=True)
    assert shipped.options.model == str(folder) and shipped.files is not None
    assert local_model(shipped).model == str(folder)  # present here: used as it is

    shutil.rmtree(folder)  # as on another node
    written = Path(local_model(shipped).model)
    assert written != folder and written.is_dir()
    assert sorted(p.name for p in written.iterdir()) == sorted(
        p.name for p in (tiny_model / "ct2").iterdir()
    )
    assert (written / "model.bin").read_bytes() == (tiny_model / "ct2" / "model.bin").read_bytes()
    assert local_model(shipped).model == str(written)  # once per node, then reused


def test_builtin_models_are_not_converted_or_shipped():
    actor = prepare_model(ModelOptions(model="builtin:base"), ship=True)
    assert actor.options.model == "builtin:base" and actor.files is None
