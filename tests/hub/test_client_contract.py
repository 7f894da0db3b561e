"""The private parts of huggingface_hub this launcher relies on, each exercised against the
installed client, so that an upgrade that moves or changes one fails here and not in a pod.

Each is wrapped by one function in kaito_runtime.hub (the reason is in its docstring):
- ``file_download.http_get``: the only call that resumes a body into a file we own with a Range
  request (``hf_hub_download`` keeps its own per-process temp files and deletes them);
  wrapped by ``hub.download_range``.
- ``constants.DOWNLOAD_CHUNK_SIZE``: read by ``http_get`` at each call; lowered so progress and
  partial files move with the bytes received; wrapped by ``hub.receive_in_small_chunks``.
- ``constants.MAX_HTTP_DOWNLOAD_SIZE``: above it the client switches to Xet; read by
  ``hub.http_download_limit``.
- ``utils._http._GLOBAL_CLIENT_FACTORY`` / ``default_client_factory``: there is a public setter
  (``set_client_factory``) but no getter, and the timeouts must wrap whatever factory is in use;
  wrapped by ``hub.timeouts.install_timeouts``.
"""

from __future__ import annotations

import inspect

import pytest


def test_http_get_takes_the_arguments_download_range_passes():
    from huggingface_hub.file_download import http_get

    params = inspect.signature(http_get).parameters
    for name in ("url", "temp_file", "resume_size", "headers", "expected_size", "displayed_filename", "tqdm_class"):
        assert name in params, name


def test_http_get_reads_the_chunk_size_at_each_call():
    from huggingface_hub import constants
    from huggingface_hub.file_download import http_get

    assert isinstance(constants.DOWNLOAD_CHUNK_SIZE, int) and constants.DOWNLOAD_CHUNK_SIZE > 0
    assert "DOWNLOAD_CHUNK_SIZE" in inspect.getsource(http_get)


def test_receive_in_small_chunks_lowers_the_clients_chunk_size(monkeypatch):
    from huggingface_hub import constants

    from kaito_runtime import hub

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 10 * 1024 * 1024)
    hub.receive_in_small_chunks()
    assert constants.DOWNLOAD_CHUNK_SIZE == hub.RECEIVE_CHUNK_BYTES


def test_the_xet_threshold_is_a_number_of_bytes():
    from huggingface_hub import constants

    assert isinstance(constants.MAX_HTTP_DOWNLOAD_SIZE, int) and constants.MAX_HTTP_DOWNLOAD_SIZE > 10**9


def test_the_client_factory_in_use_can_be_read_and_its_default_builds_a_client():
    from huggingface_hub.utils import _http

    assert hasattr(_http, "_GLOBAL_CLIENT_FACTORY")
    client = _http.default_client_factory()
    try:
        assert callable(getattr(client, "request", None)) and callable(getattr(client, "close", None))
    finally:
        client.close()


def test_install_timeouts_wraps_the_factory_in_use_and_keeps_a_users_factory(monkeypatch):
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    from kaito_runtime.hub import timeouts

    made = []

    def users_factory():
        made.append(True)
        return _http.default_client_factory()

    saved = _http._GLOBAL_CLIENT_FACTORY
    try:
        set_client_factory(users_factory)
        timeouts.install_timeouts()
        wrapped = _http._GLOBAL_CLIENT_FACTORY
        assert wrapped is not users_factory
        wrapped().close()
        assert made, "the user's factory is still the one that builds clients"
    finally:
        set_client_factory(saved)


@pytest.mark.parametrize("name", ["http_get"])
def test_the_private_names_are_imported_in_one_place_each(name):
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "kaito_runtime"
    users = [p for p in package.rglob("*.py") if f"import {name}" in p.read_text()]
    assert [p.relative_to(package).as_posix() for p in users] == ["hub/client.py"]
