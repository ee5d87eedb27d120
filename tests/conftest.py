"""Fixtures shared by more than one test area."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def features_file_keys() -> set[str]:
    """The arrays of a features file, as ``crossreid extract`` writes it and
    ``extract_query_gallery`` returns it (what ``crossreid evaluate --features`` and
    ``crossreid search`` read)."""
    return {"qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids", "q_paths", "g_paths"}


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: the suite runs 2 pytest workers on 2 cores, and more
    threads per worker only oversubscribe (measured 3-5x slower training steps)."""
    from crossreid.utils.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(autouse=True, scope="session")
def _onnx_graph_cache(tmp_path_factory):
    """Exported ONNX graphs (the ``auto`` inference engine) go to a folder of this session,
    not the user's cache (``crossreid.inference.onnx_engine.onnx_cache_dir``); child
    processes inherit it."""
    import os

    before = os.environ.get("CROSSREID_ONNX_CACHE")
    os.environ["CROSSREID_ONNX_CACHE"] = str(tmp_path_factory.mktemp("onnx-cache"))
    yield
    if before is None:
        os.environ.pop("CROSSREID_ONNX_CACHE", None)
    else:
        os.environ["CROSSREID_ONNX_CACHE"] = before


@pytest.fixture(scope="module")
def module_tmp_path(tmp_path_factory, request):
    """A folder for one test module's shared fixtures (checkpoints of ~90-180 MB), deleted
    when the module ends: ``tmp_path_factory.mktemp`` folders live until the session ends,
    and the suite runs on machines whose disk is shared."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)
