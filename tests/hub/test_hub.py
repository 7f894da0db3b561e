"""kaito_runtime.hub: metadata, timeouts and error translation, against the real client."""

from __future__ import annotations

import inspect

import pytest

from kaito_runtime.errors import GatedRepoNoTokenError, InputError, WeightsError
from kaito_runtime.hub import check_repo_id, fetch_model_metadata, repo_id_problem
from tests.support.steps import offline_in
from tests.support.steps import weights_bytes
from kaito_runtime.secrets import Secret
from tests.support.steps import ensure_weights
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
    assert weights_bytes(tiny.files) == 200_000  # the top-level safetensors only: not the .bin, not original/


def test_weights_bytes_follow_the_load_format(hub):
    sharded = fetch_model_metadata("org/sharded", None, token=None, endpoint=hub.url)
    assert weights_bytes(sharded.files, "hf") == 80_000
    assert weights_bytes(sharded.files, "mistral") == 70_000


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


# --- repo ids --------------------------------------------------------------------------------------

VALID_IDS = [
    "a/b",
    "org/name",
    "Org_1/My-Model.v2",
    "meta-llama/Llama-3.3-70B-Instruct",
    "_a/_b_",
    "o" * 96 + "/" + "n" * 96,
]
INVALID_IDS = {
    "has space/x": "' '",
    "a/b/c": "2 '/'",
    "bad//id": "2 '/'",
    "a/b/c/d": "3 '/'",
    "noslash": "It has 0 '/'",
    "": "0 '/'",
    "-a/b": "starts or ends",
    "a/b-": "starts or ends",
    "a/.b": "starts or ends",
    "a./b": "starts or ends",
    "a/": "The name part is empty",
    "/b": "org part is empty",
    "o/" + "n" * 97: "97 characters long (at most 96)",
    "o" * 97 + "/n": "97 characters long (at most 96)",
    "a/b..c": "'..'",
    "a../b": "'..'",
    "a/..": "'..'",
    "a/b--c": "'--'",
    "a/b.git": "'.git'",
    "café/x": "'é'",
    "a/b?c": "'?'",
    "a\\b/c": "'\\\\'",
}


@pytest.mark.parametrize("text", VALID_IDS)
def test_well_formed_repo_ids_pass(text):
    assert repo_id_problem(text) is None
    check_repo_id(text)


@pytest.mark.parametrize("text, why", INVALID_IDS.items(), ids=[repr(t)[:40] for t in INVALID_IDS])
def test_malformed_repo_ids_are_input_errors_naming_the_text_and_the_form(text, why):
    with pytest.raises(InputError) as info:
        check_repo_id(text)
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert repr(text) in msg and why in msg, msg
    assert "org/name" in msg and "96" in msg and "'-', '_' and '.'" in msg


@pytest.mark.parametrize("text", [*VALID_IDS, *INVALID_IDS])
def test_repo_id_rule_agrees_with_the_client_for_org_slash_name(text):
    """Same verdict as huggingface_hub's validate_repo_id, which also accepts a bare name (we do not)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
        client_ok = text.count("/") == 1
    except HFValidationError:
        client_ok = False
    assert (repo_id_problem(text) is None) == client_ok


def test_malformed_repo_id_fails_before_any_request(hub, tmp_path):
    with pytest.raises(InputError, match="not a valid Hugging Face repo id"):
        fetch_model_metadata("has space/x", None, token=None, endpoint=hub.url)
    with pytest.raises(InputError, match="not a valid Hugging Face repo id"):
        ensure_weights(spec("org/../x"), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert hub.count() == 0
    assert not any(tmp_path.iterdir())  # nothing named after it on disk either


def test_the_repo_id_rule_does_not_import_the_client():
    import subprocess
    import sys

    code = (
        "import sys; from kaito_runtime.model.sources import check_repo_id; check_repo_id('a/b');"
        "print(any(m.startswith(('huggingface_hub', 'httpx')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"HF_HUB_OFFLINE": "1"}, True),
        ({"HF_HUB_OFFLINE": " TRUE "}, True),
        ({"TRANSFORMERS_OFFLINE": "yes"}, True),
        ({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "off"}, False),
    ],
)
def test_offline_in_reads_only_the_mapping_it_is_given(monkeypatch, env, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the process environment must not matter
    assert offline_in(env) is expected
