from __future__ import annotations

import pytest

from tests.backends.tiny_ct2 import make_tiny_ct2


@pytest.fixture(scope="session")
def tiny_ct2_dir(tmp_path_factory):
    return make_tiny_ct2(tmp_path_factory.mktemp("tiny-ct2"))
