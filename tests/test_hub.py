"""kaito_runtime.hub: metadata, timeouts and error translation, against the real client."""

from __future__ import annotations

import inspect

import pytest

from kaito_runtime.errors import GatedRepoNoTokenError, WeightsError
from kaito_runtime.hub import fetch_model_metadata
from kaito_runtime.secrets import Secret
from kaito_runtime.weights import ensure_weights
from tests.conftest import GRANTED_TOKEN
from tests.support.weights_helpers import spec

pytestmark = pytest.mark.usefixtures("hub_env")


def test_fetch_model_metadata(hub):
    remote = fetch_model_metadata("org/gated", None, token=Secret(GRANTED_TOKEN), endpoint=hub.url)
    assert remote.revision == hub.commit_of("org/gated") and remote.gated is True
    assert remote.config["architectures"] == ["LlamaForCausalLM"]
    assert {f.path: f.size for f in remote.files}["model.safetensors"] == 60_000
    with pytest.raises(GatedRepoNoTokenError):  # config.json of a gated repo needs the token too
        fetch_model_metadata("org/gated", None, token=None, endpoint=hub.url)

    tiny = fetch_model_metadata("org/tiny", "main", token=None, endpoint=hub.url)
    assert tiny.gated is False and tiny.config["num_hidden_layers"] == 2
    assert {f.path: f.size for f in tiny.files}["original/model.safetensors"] == 30_000
    assert tiny.weights_bytes == 200_000  # the top-level safetensors only: not the .bin, not original/


def test_weights_bytes_follow_the_load_format(hub):
    sharded = fetch_model_metadata("org/sharded", None, token=None, endpoint=hub.url)
    assert sharded.weights_bytes_for("hf") == 80_000
    assert sharded.weights_bytes_for("mistral") == 70_000


# --- answers nothing else explains ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (200, b"{not json", ("Unexpected answer", "org/tiny")),
        (418, b'{"error": "I am a teapot"}', ("Unexpected answer", "HTTP 418")),
    ],
)
def test_odd_hub_answers_become_weights_errors(hub, tmp_path, status, body, words):
    hub.api_answer = (status, body)
    for call in (
        lambda: ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url),
        lambda: fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url),
    ):
        with pytest.raises(WeightsError) as info:
            call()
        assert type(info.value) is WeightsError and info.value.exit_code == 10
        for word in words:
            assert word in str(info.value), str(info.value)


def test_malformed_config_json_names_the_file(tmp_path_factory):
    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("odd-repos")
    repo = root / "org" / "badjson"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    (repo / "model.safetensors").write_bytes(b"\0" * 2048)
    with HubEmulator(root, lfs_threshold=1024) as emulator:
        with pytest.raises(WeightsError) as info:
            fetch_model_metadata("org/badjson", None, token=None, endpoint=emulator.url)
    assert "config.json of org/badjson" in str(info.value) and "not valid JSON" in str(info.value)


# --- the private client API this module relies on -----------------------------------------------


def test_client_http_get_has_the_signature_download_range_uses():
    from huggingface_hub.file_download import http_get

    params = inspect.signature(http_get).parameters
    for name in ("resume_size", "headers", "expected_size", "displayed_filename", "tqdm_class"):
        assert name in params, name
    from huggingface_hub import constants, set_client_factory  # noqa: F401
    from huggingface_hub.utils import _http

    assert callable(_http.default_client_factory) and constants.MAX_HTTP_DOWNLOAD_SIZE > 0
