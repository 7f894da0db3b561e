"""Models in object stores (issue 23): s3://, gs://, az:// planned from the store before anything
loads, faults before vLLM starts, --download-only copies, and credentials that never show.

Units first (no server); then through real servers on loopback, started here: moto (S3), Azurite
(Azure Blob) and gcp-storage-emulator (GCS), with `kaito-run` as a real process. The real-vLLM
tests are in tests/e2e/test_object_stores.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kaito_runtime import objstore
from kaito_runtime.errors import InputError
from tests.support import object_stores as st
from tests.support.ci import need_module
from tests.support.hardening import launcher_env, leaked, run_cli

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny-llama"

# --- units ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "scheme", "bucket", "prefix", "account", "vllm_form"),
    [
        ("s3://models/tiny-llama", {}, "s3", "models", "tiny-llama", None, "s3://models/tiny-llama"),
        ("s3://models/org/tiny/", {}, "s3", "models", "org/tiny", None, "s3://models/org/tiny"),
        ("gs://bkt", {}, "gs", "bkt", "", None, "gs://bkt"),
        # KAITO's model mirror: az://CONTAINER/ID with the account in AZURE_STORAGE_ACCOUNT_NAME
        ("az://models/phi-4", {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}, "az", "models", "phi-4", "acct", "az://models/phi-4"),
        ("az://models/org/phi-4", {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}, "az", "models", "org/phi-4", "acct", "az://models/org/phi-4"),
        # the three-part form names the account first
        ("az://acct/models/phi-4", {}, "az", "models", "phi-4", "acct", "az://models/phi-4"),
        ("az://acct/models/phi-4", {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}, "az", "models", "phi-4", "acct", "az://models/phi-4"),
    ],
)
def test_uri_forms(text, env, scheme, bucket, prefix, account, vllm_form):
    uri = objstore.parse_uri(text, env)
    assert (uri.scheme, uri.bucket, uri.prefix, uri.account) == (scheme, bucket, prefix, account)
    assert uri.uri == vllm_form
    assert objstore.parse_uri(uri.shown, env) == uri  # the plan's form reads back the same


@pytest.mark.parametrize("text", ["s3://", "s3:///x", "gs://../x", "s3://b/../x", "s3://b/a b", "az://-x/y"])
def test_a_malformed_uri_is_bad_input(text):
    with pytest.raises(InputError) as err:
        objstore.parse_uri(text, {})
    assert err.value.exit_code == 2 and "s3://BUCKET/PREFIX" in err.value.message


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_a_bad_store_timeout_is_bad_input(value):
    with pytest.raises(InputError) as err:
        objstore.timeout_s({"KAITO_STORE_TIMEOUT": value})
    assert "KAITO_STORE_TIMEOUT" in err.value.message
    assert objstore.timeout_s({}) == 30 and objstore.timeout_s({"KAITO_STORE_TIMEOUT": "2.5"}) == 2.5


def test_the_version_digest_changes_with_any_object_version():
    a = [objstore.StoreObject("config.json", 10, "e1"), objstore.StoreObject("model.safetensors", 99, "e2")]
    b = [a[0], objstore.StoreObject("model.safetensors", 99, "e3")]
    assert objstore.version_digest(a) == objstore.version_digest(list(reversed(a)))
    assert objstore.version_digest(a) != objstore.version_digest(b)
    assert len(objstore.version_digest(a)) == 16


def test_the_assets_folder_is_where_vllm_looks():
    # vllm/transformers_utils/runai_utils.py: $VLLM_ASSETS_CACHE/model_streamer/sha256(model)[:8]
    uri = objstore.parse_uri("az://acct/models/phi-4", {})
    expected = hashlib.sha256(b"az://models/phi-4").hexdigest()[:8]
    assert objstore.assets_folder("/c", uri) == Path("/c/model_streamer") / expected


def test_the_sas_token_file_of_kaito(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("# written by fetch-sas\nexport AZURE_STORAGE_SAS_TOKEN='sv=2026&sig=abc%2Bdef'\nOTHER=1\n")
    env = {"STREAM_ENV_FILE": str(env_file)}
    assert objstore.sas_from_file(env) == "sv=2026&sig=abc%2Bdef"
    plain, secret = objstore.store_env(objstore.parse_uri("az://acct/models/x", env), env)
    assert plain == {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}
    assert secret == {"AZURE_STORAGE_SAS_TOKEN": "sv=2026&sig=abc%2Bdef"}
    assert "sv=2026&sig=abc%2Bdef" in objstore.secret_values(env)
    # set by KAITO's wrapper already: nothing to add
    env["AZURE_STORAGE_SAS_TOKEN"] = "given"
    assert objstore.store_env(objstore.parse_uri("az://acct/models/x", env), env)[1] == {}


@pytest.mark.parametrize(("suffix", "host"), [
    (None, "acct.blob.core.windows.net"),
    ("blob.core.chinacloudapi.cn", "acct.blob.core.chinacloudapi.cn"),
    ("localhost:10000", "acct.localhost:10000"),
])
def test_the_azure_endpoint_suffix_means_what_it_means_to_the_streamer(suffix, host):
    # runai-model-streamer-azure (C++ and Python): https://ACCOUNT.SUFFIX, SUFFIX defaulting to
    # blob.core.windows.net; the plan must read the host vLLM will read.
    need_module("azure.storage.blob", "azure-storage-blob is not installed (the cpu extra has it)")
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_SAS_TOKEN": "sv=2026&sig=abc"}
    if suffix:
        env["AZURE_STORAGE_ENDPOINT_SUFFIX"] = suffix
    store = objstore.open_store(objstore.parse_uri("az://models/phi-4", env), env)
    assert store.container.url.partition("?")[0] == f"https://{host}/models"


def test_streamer_arguments_follow_the_tensor_parallel_size():
    from dataclasses import replace

    from tests.support.steps import streamer_tokens
    from tests.support.steps import spec_from_folder
    from kaito_runtime.types import LaunchPlan, Topology

    spec = replace(spec_from_folder(TINY), local_path=None, store_uri="s3://models/tiny-llama")
    plan = LaunchPlan(model=spec, target="cpu", topology=Topology())
    assert streamer_tokens(plan) == ["--load-format", "runai_streamer"]
    assert streamer_tokens(replace(plan, tensor_parallel_size=2)) == [
        "--load-format", "runai_streamer", "--model-loader-extra-config", '{"distributed": true}'
    ]
    assert streamer_tokens(replace(plan, model=replace(spec, store_uri=None))) == []


# --- through real servers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moto")
    server = st.start_moto(tmp)
    st.upload_s3(server, "models", "tiny-llama", TINY)
    st.upload_s3(server, "models", "org/tiny-llama", TINY)
    yield server
    server.stop()


def cli(args, env, home, timeout=120):
    return run_cli(args, launcher_env(env, home=home), timeout=timeout)


def store_run(uri: str, env: dict, tmp_path: Path, *extra: str):
    """`kaito-run --model URI` for real (not a dry run): a fault must stop it before vLLM."""
    return cli(["--model", uri, "--weights-dir", str(tmp_path / "w"), "--port", str(st.free_port()), *extra],
               env, tmp_path)


@pytest.mark.slow
def test_s3_plan_reads_only_headers_and_matches_the_folder(moto, tmp_path):
    from tests.support.steps import spec_from_folder
    from tests.support.steps import spec_from_store

    mark = moto.mark()
    spec = spec_from_store("s3://models/tiny-llama", st.s3_env(moto))
    folder = spec_from_folder(TINY)
    assert spec.weights_figures == folder.weights_figures  # exact bytes and parameters, by range
    assert spec.parameter_count == 819_840 and spec.weights_bytes == folder.weights_figures.stored_bytes
    assert (spec.architecture, spec.attention, spec.max_context) == (folder.architecture, folder.attention, folder.max_context)
    assert spec.store_uri == "s3://models/tiny-llama" and spec.store_version
    requests = st.werkzeug_requests(moto.lines_since(mark))
    shard = [r for r in requests if r[1].endswith("model.safetensors")]
    assert shard and all(status == 206 for _, _, status in shard), requests  # ranged, never the whole object
    assert sum(1 for r in requests if r[0] == "GET") <= 3, requests  # listing, config.json, one header read


@pytest.mark.slow
def test_s3_dry_run_streams_the_uri_and_shows_no_credential(moto, tmp_path):
    ran = cli(["--model", "s3://models/org/tiny-llama", "--dry-run", "-o", "json"], st.s3_env(moto), tmp_path)
    assert ran.code == 0, ran.output
    out = json.loads(ran.stdout)
    argv = out["vllm"]["argv"]
    text = ran.stdout
    assert "s3://models/org/tiny-llama" in text and "runai_streamer" in text
    assert '"distributed"' not in text  # TP 1
    for secret in (st.S3_SECRET, st.S3_KEY_ID):
        assert not leaked(secret, ran.output), ran.output
    assert argv[argv.index("serve") + 1] == "s3://models/org/tiny-llama"
    assert out["model"]["store_uri"] == "s3://models/org/tiny-llama"


def test_credentials_reach_vllm_by_environment_only(tmp_path, monkeypatch):
    """The child's argv has no credential; its environment has them (the streamer reads them there)."""
    from tests.support.steps import api, launch
    from tests.support.steps import spec_from_folder

    spec = spec_from_folder(TINY)
    from dataclasses import replace

    store_spec = replace(spec, local_path=None, store_uri="az://acct/models/tiny-llama", store_version="v1")
    monkeypatch.setattr(api, "_resolve", lambda launch: store_spec)  # the model step of a settled request
    sas = "sv=2026-10-06&sr=c&sig=SecretSignatureValue0123456789"
    env_file = tmp_path / "env"
    env_file.write_text(f"AZURE_STORAGE_SAS_TOKEN={sas}\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STREAM_ENV_FILE": str(env_file),
           "AWS_SECRET_ACCESS_KEY": "awsSecretValue0123456789"}
    _, built = api.dry_run(api.RuntimeRequest(model="az://acct/models/tiny-llama", dry_run=True), env)
    assert built.argv[built.argv.index("serve") + 1] == "az://models/tiny-llama"
    assert "runai_streamer" in built.argv
    from tests.support.steps import WeightsResult

    weights = WeightsResult(tmp_path / "c" / "model_streamer" / "abcd1234", 0, False, 0.0, 1, "v1")
    plain, secret = objstore.child_env(store_spec.store_uri, env, weights.path)
    child = {**launch.child_environment(built, env, plain), **secret}
    assert child["AZURE_STORAGE_SAS_TOKEN"] == sas and child["AZURE_STORAGE_ACCOUNT_NAME"] == "acct"
    assert child["VLLM_ASSETS_CACHE"] == str(tmp_path / "c")
    assert child["AWS_SECRET_ACCESS_KEY"] == "awsSecretValue0123456789"  # inherited, not removed
    shown = " ".join(built.argv) + launch.start_line(built, plain)
    assert not leaked(sas, shown) and not leaked("awsSecretValue0123456789", shown), shown


# --- faults: each its own exit code and one line, before vLLM starts --------------------------------


def _one_line_error(ran) -> str:
    errors = [line for line in ran.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, ran.output
    assert "starting vLLM" not in ran.output, ran.output
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("uri", "code", "names"),
    [
        ("s3://no-such-bucket/tiny-llama", 14, ["s3://no-such-bucket/tiny-llama", "NoSuchBucket", "Fix:"]),
        ("s3://models/no-such-prefix", 14, ["s3://models/no-such-prefix", "no such prefix", "Fix:"]),
    ],
)
def test_s3_not_found(moto, tmp_path, uri, code, names):
    ran = store_run(uri, st.s3_env(moto), tmp_path)
    assert ran.code == code, ran.output
    line = _one_line_error(ran)
    for name in names:
        assert name in line, line
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("*.safetensors"))


def variant_run(moto, tmp_path: Path, name: str, weights: dict[str, bytes]):
    """The tiny model's config and tokenizer plus ``weights`` under s3://models/NAME, served."""
    folder = tmp_path / name
    folder.mkdir()
    for kept in ("config.json", "tokenizer.json"):
        shutil.copy(TINY / kept, folder)
    for file_name, data in weights.items():
        (folder / file_name).write_bytes(data)
    st.upload_s3(moto, "models", name, folder, create=False)
    return store_run(f"s3://models/{name}", st.s3_env(moto), tmp_path)


@pytest.mark.slow
def test_s3_missing_credentials(moto, tmp_path):
    env = {k: v for k, v in st.s3_env(moto).items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    ran = store_run("s3://models/tiny-llama", {**env, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                                                 "AWS_CONFIG_FILE": str(tmp_path / "none")}, tmp_path)
    assert ran.code == 11, ran.output
    line = _one_line_error(ran)
    assert "No credentials for s3://models/tiny-llama" in line and "AWS_ACCESS_KEY_ID" in line


@pytest.mark.slow
def test_s3_no_safetensors(moto, tmp_path):
    ran = variant_run(moto, tmp_path, "bin-only", {"pytorch_model.bin": b"\0" * 1000})
    assert ran.code == 10, ran.output
    line = _one_line_error(ran)
    assert "s3://models/bin-only holds no *.safetensors" in line and "pytorch_model.bin" in line


@pytest.mark.slow
def test_s3_truncated_object(moto, tmp_path):
    ran = variant_run(moto, tmp_path, "cut", {"model.safetensors": (TINY / "model.safetensors").read_bytes()[:300_000]})
    assert ran.code == 18, ran.output
    line = _one_line_error(ran)
    assert "s3://models/cut/model.safetensors is truncated (300000 bytes" in line and "Fix: upload" in line


@pytest.mark.slow
def test_s3_store_down(tmp_path):
    port = st.free_port()  # nothing listens there
    env = {"AWS_ACCESS_KEY_ID": st.S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": st.S3_SECRET,
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    ran = store_run("s3://models/tiny-llama", env, tmp_path)
    assert ran.code == 16, ran.output
    line = _one_line_error(ran)
    assert f"S3 at http://127.0.0.1:{port} cannot be reached for s3://models/tiny-llama" in line


@pytest.mark.slow
def test_s3_store_that_hangs_meets_its_deadline(tmp_path):
    silent = st.SilentServer()
    try:
        env = {"AWS_ACCESS_KEY_ID": st.S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": st.S3_SECRET,
               "AWS_ENDPOINT_URL": silent.url, "AWS_DEFAULT_REGION": "us-east-1", "KAITO_STORE_TIMEOUT": "1"}
        ran = store_run("s3://models/tiny-llama", env, tmp_path)
    finally:
        silent.stop()
    assert ran.code == 19, ran.output
    line = _one_line_error(ran)
    assert "said nothing for 1 s while reading s3://models/tiny-llama" in line and "KAITO_STORE_TIMEOUT" in line


def _moto_user(iam, name: str, actions: list[str]) -> dict[str, str]:
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    iam.put_user_policy(UserName=name, PolicyName="read", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.mark.slow
def test_s3_wrong_credentials_and_a_user_the_policy_denies(tmp_path):
    """moto checks signatures and IAM policies once its first N (setup) requests are done."""
    setup_requests = 2 * 3 + 1 + len([p for p in TINY.iterdir() if p.is_file()])
    server = st.start_moto(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": str(setup_requests)})
    try:
        import boto3

        iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        reader = _moto_user(iam, "reader", ["s3:*"])
        lister = _moto_user(iam, "lister", ["s3:ListBucket"])  # may list, may not read an object
        st.upload_s3(server, "models", "tiny-llama", TINY)
        base = {"AWS_ENDPOINT_URL": server.url, "AWS_DEFAULT_REGION": "us-east-1"}
        good = {**base, **reader}
        ok = cli(["--model", "s3://models/tiny-llama", "--dry-run"], good, tmp_path)
        assert ok.code == 0, ok.output
        wrong = {**good, "AWS_SECRET_ACCESS_KEY": "wrongSecretValue0123456789abcdef"}
        ran = store_run("s3://models/tiny-llama", wrong, tmp_path)
        assert ran.code == 12, ran.output
        line = _one_line_error(ran)
        assert "rejected the credentials for s3://models/tiny-llama" in line and "SignatureDoesNotMatch" in line
        for secret in (reader["AWS_SECRET_ACCESS_KEY"], "wrongSecretValue0123456789abcdef"):
            assert not leaked(secret, ran.output + ok.output)
        unknown = {**good, "AWS_ACCESS_KEY_ID": "AKIAUNKNOWN000000000"}
        assert store_run("s3://models/tiny-llama", unknown, tmp_path).code == 12
        denied = store_run("s3://models/tiny-llama", {**base, **lister}, tmp_path)
        assert denied.code == 13, denied.output
        line = _one_line_error(denied)
        assert "s3://models/tiny-llama" in line and "Fix:" in line, line
        assert not leaked(lister["AWS_SECRET_ACCESS_KEY"], denied.output)
    finally:
        server.stop()


# --- --download-only from a store -------------------------------------------------------------------


def _copy_files(root: Path) -> dict[str, bytes]:
    copies = [p for p in root.rglob(".kaito-complete.json")]
    assert len(copies) == 1, copies
    folder = copies[0].parent
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


@pytest.mark.slow
def test_s3_download_only_copies_verifies_and_reuses(moto, tmp_path):
    weights = tmp_path / "w"
    ran = cli(["--model", "s3://models/tiny-llama", "--download-only", "--weights-dir", str(weights)], st.s3_env(moto), tmp_path)
    assert ran.code == 0, ran.output
    files = _copy_files(weights)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert files[name] == (TINY / name).read_bytes()
    assert not list(weights.rglob("*.part"))
    mark = moto.mark()
    again = cli(["--model", "s3://models/tiny-llama", "--download-only", "--weights-dir", str(weights)], st.s3_env(moto), tmp_path)
    assert again.code == 0 and "reusing complete copy" in again.output, again.output
    assert not any(path.endswith(".safetensors") for _, path, _ in st.werkzeug_requests(moto.lines_since(mark)))


@pytest.mark.slow
def test_s3_download_resumes_a_partial_file_and_refetches_a_bad_one(moto, tmp_path):
    from tests.support.steps import objects

    env = st.s3_env(moto)
    store = objstore.open_store(objstore.parse_uri("s3://models/tiny-llama", env), env)
    listed = {o.name: o for o in store.list()}
    version = objstore.version_digest(list(listed.values()))
    folder = objects.copy_folder(tmp_path / "w", objstore.parse_uri("s3://models/tiny-llama", env), version)
    shard = listed["model.safetensors"]
    part = objects._partial(folder, shard)
    part.parent.mkdir(parents=True)
    data = (TINY / "model.safetensors").read_bytes()
    part.write_bytes(data[:1_000_000])  # a run killed part-way
    mark = moto.mark()
    ran = cli(["--model", "s3://models/tiny-llama", "--download-only", "--weights-dir", str(tmp_path / "w")], env, tmp_path)
    assert ran.code == 0, ran.output
    assert "resuming model.safetensors at" in ran.output
    assert (folder / "model.safetensors").read_bytes() == data
    gets = [r for r in st.werkzeug_requests(moto.lines_since(mark)) if r[1].endswith("model.safetensors")]
    assert gets == [("GET", "/models/tiny-llama/model.safetensors", 206)], gets  # only the rest

    # A partial whose bytes are wrong fails the ETag's MD5 and is fetched again whole.
    (folder / "model.safetensors").unlink()
    (folder / ".kaito-complete.json").unlink()
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"\xff" * 1_000_000)
    ran = cli(["--model", "s3://models/tiny-llama", "--download-only", "--weights-dir", str(tmp_path / "w")], env, tmp_path)
    assert ran.code == 0, ran.output
    assert "failed verification (its MD5 differs from the object's ETag); fetching it again" in ran.output
    assert (folder / "model.safetensors").read_bytes() == data


@pytest.mark.slow
def test_s3_download_waits_for_the_lock_of_another_launcher(moto, tmp_path):
    from filelock import FileLock

    from tests.support.steps import objects
    from tests.support.steps import lock_path

    env = st.s3_env(moto)
    uri = objstore.parse_uri("s3://models/tiny-llama", env)
    store = objstore.open_store(uri, env)
    version = objstore.version_digest(store.list())
    folder = objects.copy_folder(tmp_path / "w", uri, version)
    folder.parent.mkdir(parents=True)
    with FileLock(str(lock_path(folder.parent, version))):
        ran = cli(["--model", "s3://models/tiny-llama", "--download-only", "--weights-dir", str(tmp_path / "w")],
                  {**env, "KAITO_WEIGHTS_LOCK_TIMEOUT": "2"}, tmp_path)
    assert ran.code == 10, ran.output
    assert not (folder / "model.safetensors").exists()


# --- Azure (Azurite) and GCS (gcp-storage-emulator) ----------------------------------------------


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("azurite")
    server = st.start_azurite(tmp)
    st.upload_azure(server, "models", "tiny-llama", TINY)
    yield server
    server.stop()


def azurite_sas_env(server, tmp_path: Path) -> dict[str, str]:
    """The endpoint from a key-less connection string, the SAS token from KAITO's env file."""
    env_file = tmp_path / "streaming-env"
    env_file.write_text(f"AZURE_STORAGE_SAS_TOKEN='{st.azure_sas(server, 'models')}'\n")
    return {"AZURE_STORAGE_CONNECTION_STRING": st.azurite_connection_string(server, with_key=False),
            "STREAM_ENV_FILE": str(env_file)}


@pytest.mark.slow
def test_azure_plan_with_a_sas_token_reads_only_headers(azurite, tmp_path):
    from tests.support.steps import spec_from_folder

    env = azurite_sas_env(azurite, tmp_path)
    before = len(st.azurite_requests(azurite))
    ran = cli(["--model", f"az://{st.AZURITE_ACCOUNT}/models/tiny-llama", "--dry-run", "-o", "json"], env, tmp_path)
    assert ran.code == 0, ran.output
    assert "az://models/tiny-llama" in ran.stdout and "runai_streamer" in ran.stdout
    assert str(spec_from_folder(TINY).weights_figures.parameter_count) in ran.stdout.replace(",", "")
    sas = st.azure_sas(azurite, "models")
    sig = sas.split("sig=")[1]
    assert not leaked(sig, ran.output), ran.output
    shard = [r for r in st.azurite_requests(azurite)[before:] if "model.safetensors" in r[1]]
    assert shard and all(r[2].startswith("bytes=0-") and r[2] != "" for r in shard), shard


@pytest.mark.slow
def test_azure_faults(azurite, tmp_path):
    keyed = {"AZURE_STORAGE_CONNECTION_STRING": st.azurite_connection_string(azurite)}
    ran = store_run(f"az://{st.AZURITE_ACCOUNT}/nocontainer/tiny-llama", keyed, tmp_path)
    assert ran.code == 14, ran.output
    assert "az://devstoreaccount1/nocontainer/tiny-llama not found" in _one_line_error(ran)
    assert not leaked(st.AZURITE_KEY, ran.output)
    env = azurite_sas_env(azurite, tmp_path)
    ran = store_run(f"az://{st.AZURITE_ACCOUNT}/nocontainer/tiny-llama", env, tmp_path)
    assert ran.code == 12, ran.output  # a SAS for another container does not open this one
    assert "rejected the credentials for az://devstoreaccount1/nocontainer/tiny-llama" in _one_line_error(ran)
    bad = {**env, "AZURE_STORAGE_SAS_TOKEN": "sv=2026-10-06&sr=c&sp=rl&se=2099-01-01T00%3A00%3A00Z&sig=AAAAwrongsignatureAAAA%3D"}
    ran = store_run(f"az://{st.AZURITE_ACCOUNT}/models/tiny-llama", bad, tmp_path)
    assert ran.code == 12, ran.output
    assert "rejected the credentials for az://devstoreaccount1/models/tiny-llama" in _one_line_error(ran)
    assert "wrongsignature" not in ran.output


@pytest.mark.slow
def test_azure_download_only(azurite, tmp_path):
    env = azurite_sas_env(azurite, tmp_path)
    ran = cli(["--model", f"az://{st.AZURITE_ACCOUNT}/models/tiny-llama", "--download-only", "--weights-dir",
               str(tmp_path / "w")], env, tmp_path)
    assert ran.code == 0, ran.output
    assert _copy_files(tmp_path / "w")["model.safetensors"] == (TINY / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_gcs_plan_reads_only_headers(tmp_path):
    server = st.start_gcs(tmp_path)
    try:
        st.upload_gcs(server, "models", "tiny-llama", TINY)
        mark = server.mark()
        ran = cli(["--model", "gs://models/tiny-llama", "--dry-run"], {"STORAGE_EMULATOR_HOST": server.url}, tmp_path)
        assert ran.code == 0, ran.output
        assert "gs://models/tiny-llama" in ran.stdout and "runai_streamer" in ran.stdout
        shard = [r for r in st.werkzeug_requests(server.lines_since(mark)) if "model.safetensors" in r[1]]
        assert shard and all(status == 206 for *_, status in shard), shard
        missing = store_run("gs://nobucket/tiny-llama", {"STORAGE_EMULATOR_HOST": server.url}, tmp_path)
        assert missing.code == 14, missing.output
    finally:
        server.stop()


# --- the Run:ai streamer alone (no vLLM) against the loopback stores ------------------------------

STREAM_ONE = """
import sys
from runai_model_streamer import SafetensorsStreamer
with SafetensorsStreamer() as streamer:
    streamer.stream_file(sys.argv[1])
    print(sum(tensor.numel() for _, tensor in streamer.get_tensors()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_the_streamer_reads_the_loopback_store_with_the_environment_we_give_vllm(scheme, moto, tmp_path):
    """The variables store_env adds (the streamer's own endpoint names) are what lets it read."""
    import importlib.util

    if importlib.util.find_spec("runai_model_streamer") is None:
        st.missing("runai-model-streamer is not installed (the cpu extra has it)")
    if scheme == "s3":
        server, env = moto, st.s3_env(moto)
    else:
        server = st.start_gcs(tmp_path)
        st.upload_gcs(server, "models", "tiny-llama", TINY)
        env = {"STORAGE_EMULATOR_HOST": server.url}
    try:
        uri = objstore.parse_uri(f"{scheme}://models/tiny-llama", env)
        plain, secret = objstore.store_env(uri, env)
        mark = server.mark()
        done = subprocess.run([sys.executable, "-c", STREAM_ONE, f"{uri.uri}/model.safetensors"],
                              env={**launcher_env(env, home=tmp_path), **plain, **secret},
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split()[-1] == "819840"
        assert [r for r in st.werkzeug_requests(server.lines_since(mark)) if "model.safetensors" in r[1]]
    finally:
        if server is not moto:
            server.stop()


# --- KAITO's commands, through entrypoints/kaito/inference_api.py --------------------------------


def _kaito_shim():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kaito_inference_api_objstore", REPO / "entrypoints/kaito/inference_api.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("form", ["mirror", "node-local"])
def test_kaitos_streaming_commands_through_the_shim(form, moto, tmp_path):
    """KAITO's model mirror (--model=az://…/s3://… --load-format=runai_streamer plus the distributed
    loader config) and node-local weights (--model=/opt/kaito/models/<id> --load-format=runai_streamer)."""
    if form == "mirror":
        model, extra = "s3://models/tiny-llama", ["--model-loader-extra-config", '{"distributed": true}']
    else:
        local = tmp_path / "opt" / "kaito" / "models" / "kaito-test-tiny-llama"
        shutil.copytree(TINY, local)
        model, extra = str(local), []
    mapped = _kaito_shim().map_flags([f"--model={model}", "--load-format=runai_streamer", *extra,
                                      "--download-dir", str(tmp_path / "w")], {}, exists=lambda path: False)
    ran = cli([*mapped.options, "--dry-run", "-o", "json", "--", *mapped.vllm], st.s3_env(moto), tmp_path)
    assert ran.code == 0, ran.output
    out = json.loads(ran.stdout)
    argv = out["vllm"]["argv"]
    assert argv[argv.index("serve") + 1] == model
    if form == "mirror":
        assert out["model"]["store_uri"] == model and out["model"]["store_version"]
    assert sum(a.startswith("--load-format") for a in argv) == 1 and any("runai_streamer" in a for a in argv)
    assert "safetensors headers" in ran.stdout  # planned from the store / the folder, exact figures
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("*.safetensors"))  # nothing copied


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["--dry-run", "--download-only"])
def test_azure_through_kaitos_sas_export_script(mode, azurite, tmp_path):
    """KAITO's command prefix sources STREAM_ENV_FILE (its init container's SAS token) and execs
    kaito-run: the plan (or the copy) comes from Azurite with that token, which shows nowhere."""
    env = azurite_sas_env(azurite, tmp_path)
    sas = st.azure_sas(azurite, "models")
    script = REPO / "entrypoints" / "kaito" / "export_sas_token_for_streaming.sh"
    done = subprocess.run(
        ["/bin/sh", str(script), sys.executable, "-m", "kaito_runtime.cli", "--model",
         f"az://{st.AZURITE_ACCOUNT}/models/tiny-llama", mode, "--weights-dir", str(tmp_path / "w")],
        env=launcher_env(env, home=tmp_path), capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "AZURE_STORAGE_SAS_TOKEN set from" in output and "value not shown" in output
    assert not leaked(sas.split("sig=")[1], output) and not leaked(sas, output), output
    if mode == "--dry-run":
        assert "serve az://models/tiny-llama" in output and "--load-format runai_streamer" in output
    else:
        assert _copy_files(tmp_path / "w")["model.safetensors"] == (TINY / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_the_group_fingerprint_follows_the_objects_version(moto, tmp_path):
    """Each node's check-in carries the store version its weights step saw: a re-uploaded object
    (new ETag) changes the fingerprint, so nodes reading two copies cannot form one group."""
    from tests.support.steps import api
    from tests.support.steps import fingerprint
    from tests.support.steps import node_facts
    from tests.support.steps import ensure_store_weights

    folder = tmp_path / "copy"
    shutil.copytree(TINY, folder)
    st.upload_s3(moto, "models", "versioned", folder, create=False)
    env = {**launcher_env(st.s3_env(moto), home=tmp_path)}
    request = api.RuntimeRequest(model="s3://models/versioned", dry_run=True, weights_dir=tmp_path / "w")
    planned, built = api.dry_run(request, env)

    def facts():
        result = ensure_store_weights(planned.model.weights_source, weights_dir=tmp_path / "w", env=env)
        return result, node_facts(planned.inventory, planned.plan, planned.model, built, None, result.revision,
                                  None).plan_fields

    first, fields = facts()
    assert fields["model"] == "s3://models/versioned" and fields["revision"] == planned.model.store_version
    # what vLLM's environment needs to stream it comes with the weights step's answer
    assert first.vllm_env == {"RUNAI_STREAMER_S3_ENDPOINT": env["AWS_ENDPOINT_URL"],
                              "VLLM_ASSETS_CACHE": str(first.path.parent.parent)}
    assert first.vllm_secret_env == {} and planned.model_path == "s3://models/versioned"
    assert first.revision == planned.model.store_version and (first.path / "config.json").is_file()
    again = fingerprint(facts()[1])
    assert again == fingerprint(fields)
    (folder / "generation_config.json").write_text('{"do_sample": true}\n')  # someone re-uploads one file
    st.upload_s3(moto, "models", "versioned", folder, create=False)
    changed, new_fields = facts()
    assert changed.revision != first.revision and fingerprint(new_fields) != fingerprint(fields)


@pytest.mark.parametrize("text", ["az://acct/models/x?sv=2024-01-01&sig=SIGSECRET", "s3://b/p#SIGSECRET",
                                  "gs://b/p?X-Goog-Signature=SIGSECRET"])
def test_a_uri_with_a_query_or_fragment_is_refused_without_quoting_it(text):
    with pytest.raises(InputError) as err:
        objstore.parse_uri(text, {})
    message = err.value.message
    assert err.value.exit_code == 2 and "SIGSECRET" not in message and "sig=" not in message
    assert "AZURE_STORAGE_SAS_TOKEN" in message and "STREAM_ENV_FILE" in message and "\n" not in message


@pytest.mark.parametrize("where", ["AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING"])
def test_a_sas_signature_is_masked_however_a_client_re_encodes_it(where, monkeypatch):
    """The Azure client sends (and urllib3 logs at debug) the SAS with its signature decoded and
    quoted again: a '/' kept as is in the token goes out as %2F. Masking only the token's own form
    left the pieces between the slashes readable in such a line."""
    import urllib.parse

    from kaito_runtime import secrets

    monkeypatch.setattr(secrets, "_registry", set(secrets._registry))  # this test's registrations go with it
    signature = "EfbwYFGvr//EZCbrKF/GLYHyFl/JoDeIzc9Gb+5TPSkM%3D"
    token = f"se=2026-12-07T22%3A14%3A51Z&sp=rl&sv=2026-10-06&sr=c&sig={signature}"
    env = ({where: token} if where == "AZURE_STORAGE_SAS_TOKEN"
           else {where: f"BlobEndpoint=http://127.0.0.1:1/acct;SharedAccessSignature={token}"})
    objstore.register_secrets(env)
    sent = urllib.parse.quote(urllib.parse.unquote(signature), safe="")
    assert "%2F" in sent and "%2B" in sent
    line = f'"GET /acct/models?restype=container&comp=list&se=2026-12-07T22%3A14%3A51Z&sp=rl&sig={sent} HTTP/1.1" 200'
    shown = secrets.redact(line)
    for piece in ("EfbwYFGvr", "EZCbrKF", "GLYHyFl", "JoDeIzc9Gb", "5TPSkM"):
        assert piece not in shown, shown
    assert secrets.redact(f"?{token}") == f"?{secrets.MASK}"
