"""The Hugging Face token never leaks, in any form, and a token that is not a clean word is refused
before any request (issue 10, defects 1 and 2).

Through the real parts: `kaito-run` as a process (so the HTTP library and huggingface_hub log through
their own handlers as in production) against the hub emulator, and in-process through click's
CliRunner for the sweep over every control character.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaito_runtime import secrets
from kaito_runtime.cli import main
from tests.conftest import GRANTED_TOKEN
from tests.support.hardening import leaked, launcher_env, run_cli

LEFT, RIGHT = "hf_Q7zK2mX9pL", "W4vR8nT1yBcD"  # each side longer than 8 characters
CONTROL_CHARS = [chr(c) for c in (*range(0x20), 0x7F)]


def token_with(middle: str) -> str:
    return LEFT + middle + RIGHT


# --- what a token may be -------------------------------------------------------------------------


def test_a_token_file_written_by_echo_still_works(hub, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"  {GRANTED_TOKEN}\n")  # `echo TOKEN > file`, plus stray spaces
    ran = run_cli(
        ["--model", "org/gated", "--weights-dir", str(tmp_path / "w"), "--download-only", "--token-file", str(token_file)],
        launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path),
    )
    assert ran.code == 0, ran.output
    assert GRANTED_TOKEN not in ran.output


@pytest.mark.parametrize("middle", ["\n", "\r", "\nX-Injected: 1", "\t", " "], ids=repr)
@pytest.mark.parametrize("source", ["HF_TOKEN", "file"])
def test_a_token_with_a_control_character_or_space_is_refused_before_any_request(hub, tmp_path, middle, source):
    token = token_with(middle)
    extra = {"HF_ENDPOINT": hub.url}
    args = ["--model", "org/tiny", "--weights-dir", str(tmp_path / "w"), "--download-only"]
    if source == "HF_TOKEN":
        extra["HF_TOKEN"] = token
    else:
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        args += ["--token-file", str(token_file)]
    ran = run_cli(args, launcher_env(extra, home=tmp_path))
    assert ran.code == 2, ran.output
    assert not leaked(token, ran.output), ran.output
    error = [line for line in ran.stderr.splitlines() if "error" in line]
    assert len(error) == 1, ran.stderr
    assert (str(tmp_path / "token") if source == "file" else "HF_TOKEN") in error[0]
    assert "HF_ENDPOINT" not in error[0]  # the fault is the token, not the endpoint
    assert hub.records == []  # refused before any request


def test_a_non_ascii_token_is_bad_input_naming_its_variable(hub, tmp_path):
    token = token_with("\u00e9")
    ran = run_cli(
        ["--model", "org/tiny", "--weights-dir", str(tmp_path / "w"), "--download-only"],
        launcher_env({"HF_ENDPOINT": hub.url, "HF_TOKEN": token}, home=tmp_path),
    )
    assert ran.code == 2, ran.output
    assert "HF_TOKEN" in ran.stderr and "UnicodeEncodeError" not in ran.stderr
    assert not leaked(token, ran.output)
    assert hub.records == []


def test_a_token_file_that_is_not_utf8_is_one_line_exit_2(hub, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_bytes(LEFT.encode() + b"\xff\xfe" + RIGHT.encode())
    ran = run_cli(
        ["--model", "org/tiny", "--weights-dir", str(tmp_path / "w"), "--download-only", "--token-file", str(token_file)],
        launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path),
    )
    assert ran.code == 2, ran.output
    errors = [line for line in ran.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(token_file) in errors[0], ran.stderr
    assert "UnicodeDecodeError" not in ran.stderr
    assert not leaked(LEFT + "\ufffd\ufffd" + RIGHT, ran.output) and LEFT not in ran.output and RIGHT not in ran.output


def test_a_stored_login_with_a_control_character_is_refused_too(tmp_path):
    stored = tmp_path / "stored-token"
    token = token_with("\x1b[2J")
    stored.write_text(token)
    result = CliRunner().invoke(
        main, ["--model", "org/tiny", "--download-only", "--weights-dir", str(tmp_path / "w")],
        env={"HF_TOKEN_PATH": str(stored), "HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert result.exit_code == 2, result.output
    assert str(stored) in result.output and not leaked(token, result.output)


# --- redaction of every form ---------------------------------------------------------------------


@pytest.mark.parametrize("char", CONTROL_CHARS + ["\u00e9", "\u2028"], ids=lambda c: f"U+{ord(c):04X}")
def test_redaction_masks_every_form_of_a_registered_secret(char):
    token = token_with(char)
    secrets.register_secret(token)
    forms = [
        token,
        repr(token),
        ascii(token),
        repr(token.encode("utf-8")),
        str(token.encode("utf-8")),
        json.dumps(token),
        json.dumps(token, ensure_ascii=False),
        urllib.parse.quote(token),
        urllib.parse.quote_plus(token),
        f"Illegal header value {('Bearer ' + token).encode()!r}",
        token.encode("unicode_escape").decode("ascii"),
    ]
    for form in forms:
        shown = secrets.redact(f"before {form} after")
        assert not leaked(token, shown), (form, shown)
        assert shown.startswith("before ") and shown.endswith(" after")


def test_redaction_masks_the_pieces_on_both_sides_of_an_escape():
    token = token_with("\n")
    secrets.register_secret(token)
    shown = secrets.redact(f"line one {LEFT}\\nsomething else then {RIGHT}")
    assert LEFT not in shown and RIGHT not in shown


def test_redaction_masks_secrets_in_bytes_messages_of_library_handlers(tmp_path):
    """A library that logs through its own handler (huggingface_hub has one) is redacted too, and
    its line is written once."""
    token = token_with("Z")
    script = (
        "import logging, sys\n"
        "from kaito_runtime.logs import setup_logging\n"
        "from kaito_runtime import secrets\n"
        "lib = logging.getLogger('some_library')\n"
        "lib.addHandler(logging.StreamHandler())\n"  # a library's own handler, made before ours
        "lib.propagate = True\n"
        "setup_logging('text', 'info')\n"
        f"secrets.register_secret({token!r})\n"
        f"lib.warning('bad header %r', {token!r}.encode())\n"
        f"print('stdout line', {token!r})\n"
        f"print('stderr line', {token!r}, file=sys.stderr)\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], env=launcher_env(home=tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not leaked(token, done.stdout + done.stderr), done.stdout + done.stderr
    assert done.stderr.count("bad header") == 1, done.stderr


# --- the sweep: every control character, non-ASCII, non-UTF-8, through every output path ----------


def _sweep_tokens() -> list[tuple[str, bytes]]:
    cases = [(f"U+{ord(c):04X}", token_with(c).encode("utf-8")) for c in CONTROL_CHARS]
    cases.append(("non-ascii", token_with("\u00e9\u00df").encode("utf-8")))
    cases.append(("non-utf8", LEFT.encode() + b"\xff\xc3(" + RIGHT.encode()))
    return cases


def _visible(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


PATHS = {
    "download text": ["--download-only"],
    "download json": ["--download-only", "--log-format", "json"],
    "dry run text": ["--dry-run", "--assume-gpus", "1xA100-80GB"],
    "dry run json": ["--dry-run", "--assume-gpus", "1xA100-80GB", "-o", "json", "--log-format", "json"],
}


@pytest.mark.parametrize("name,raw", _sweep_tokens(), ids=[c[0] for c in _sweep_tokens()])
def test_sweep_no_fragment_of_a_bad_token_in_any_output(tiny_hub, tmp_path, name, raw):
    token = _visible(raw)
    token_file = tmp_path / "token"
    token_file.write_bytes(raw)
    sources: list[tuple[str, dict[str, str], list[str]]] = [("file", {}, ["--token-file", str(token_file)])]
    if b"\x00" not in raw and name != "non-utf8":  # an environment cannot hold those
        sources.append(("HF_TOKEN", {"HF_TOKEN": token}, []))
    runner = CliRunner()
    for source, env, extra in sources:
        for path, args in PATHS.items():
            result = runner.invoke(
                main,
                ["--model", "org/tiny-llama", "--weights-dir", str(tmp_path / "w"), *args, *extra],
                env={"HF_ENDPOINT": tiny_hub.url, **env},
            )
            shown = result.output
            assert result.exit_code == 2, (source, path, shown)
            assert not leaked(token, shown), (source, path, shown)
            assert LEFT not in shown and RIGHT not in shown, (source, path, shown)
    assert tiny_hub.records == []  # no request ever carried it


def test_sweep_a_real_process_leaks_nothing_with_library_handlers_in_place(tiny_hub, tmp_path):
    """The same, as a real process: huggingface_hub and the HTTP library have their own handlers."""
    for middle in ("\n", "\r", "\x00", "\u00e9"):
        raw = token_with(middle).encode("utf-8")
        token_file = tmp_path / "token"
        token_file.write_bytes(raw)
        for path, args in PATHS.items():
            ran = run_cli(
                ["--model", "org/tiny-llama", "--weights-dir", str(tmp_path / "w"), *args, "--token-file", str(token_file)],
                launcher_env({"HF_ENDPOINT": tiny_hub.url}, home=tmp_path),
            )
            assert ran.code == 2, (path, ran.output)
            assert LEFT not in ran.output and RIGHT not in ran.output, (path, ran.output)


def test_a_valid_token_never_reaches_the_childs_argv_or_environment(tmp_path):
    from kaito_runtime import api, launch

    token = "hf_ValidTokenValue0123456789abcdef"
    env = {"HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    request = api.RuntimeRequest(model=str(Path(__file__).resolve().parent.parent / "models" / "tiny-llama"),
                                 dry_run=True, extra_vllm_args=("--api-key", "sk-another-secret-123"))
    _, built = api.dry_run(request, env)
    child_env = launch.child_environment(built, env, {})
    shown = " ".join(built.argv) + " " + " ".join(f"{k}={v}" for k, v in child_env.items())
    assert not leaked(token, shown), shown
    assert "sk-another-secret-123" not in " ".join(built.argv)


# --- object-store credentials (issue 23) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("store", ["s3", "az"])
def test_object_store_credentials_never_show_even_in_debug_logs(store, tmp_path):
    """The clients log every request at debug level (signed headers, SAS query strings): none of a
    key id, a secret key or a SAS signature shows, in a plan or in an error."""
    from tests.support import object_stores as st

    tiny = Path(__file__).resolve().parent.parent / "models" / "tiny-llama"
    if store == "s3":
        server = st.start_moto(tmp_path)
        st.upload_s3(server, "models", "tiny-llama", tiny)
        env, uri, secrets_ = st.s3_env(server), "s3://models/tiny-llama", [st.S3_SECRET, st.S3_KEY_ID]
    else:
        server = st.start_azurite(tmp_path)
        st.upload_azure(server, "models", "tiny-llama", tiny)
        sas = st.azure_sas(server, "models")
        env = {"AZURE_STORAGE_CONNECTION_STRING": st.azurite_connection_string(server, with_key=False),
               "AZURE_STORAGE_SAS_TOKEN": sas}
        uri, secrets_ = f"az://{st.AZURITE_ACCOUNT}/models/tiny-llama", [sas, sas.split("sig=")[1]]
    try:
        for model, code in ((uri, 0), (uri + "-missing", 14)):
            ran = run_cli(["--model", model, "--dry-run", "--log-level", "debug"], launcher_env(env, home=tmp_path))
            assert ran.code == code, ran.output[-2000:]
            if store == "s3":  # botocore logs each signed request at debug (azure-core's URL log is kept off)
                assert "Sending http request" in ran.output
            for secret in secrets_:
                assert not leaked(secret, ran.output), (model, leaked(secret, ran.output))
    finally:
        server.stop()


# --- the launcher's own HTTP and its termination message (issue 22) -----------------------------


def _scrape_all(ports: tuple[int, ...]) -> str:
    import urllib.error
    import urllib.request

    seen = []
    for port in ports:
        for path in ("/metrics", "/startupz", "/health", "/v1/models"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                    seen.append(answer.read().decode("utf-8", "replace") + str(dict(answer.headers)))
            except urllib.error.HTTPError as error:
                seen.append(error.read().decode("utf-8", "replace") + str(dict(error.headers)))
            except OSError:
                continue
    return "\n".join(seen)


def _serve_scrape_and_stop(model: str, env: dict[str, str], tmp_path: Path, *vllm_args: str) -> tuple[str, str, str]:
    """kaito-run (with the stand-in vLLM) serving ``model``: every answer of both launcher ports,
    scraped from the start until ready, then SIGTERM. Returns (what the ports answered, what the
    process printed, the termination message)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.support.ports import free_port

    ports = (free_port(), free_port())
    runner = Path(__file__).resolve().parent / "support" / "fake_vllm_run.py"
    env = {**env, "KAITO_TERMINATION_LOG": str(tmp_path / "termination-log")}
    proc = subprocess.Popen(
        [sys.executable, str(runner), "--model", model, "--host", "127.0.0.1", "--port", str(ports[0]),
         "--metrics-port", str(ports[1]), "--weights-dir", str(tmp_path / "w"), "--log-format", "json",
         "--", *vllm_args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    scraped = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        scraped.append(_scrape_all(ports))
        if '"ready": true' in scraped[-1]:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    everything = "\n".join(scraped)
    assert '"ready": true' in everything, err[-2000:]
    message = (tmp_path / "termination-log").read_text()
    assert proc.returncode == 0 and "SIGTERM" in message, (proc.returncode, message)
    return everything, out + err, message


@pytest.mark.slow
def test_no_secret_in_metrics_startupz_health_or_the_termination_message(tmp_path):
    """A gated model downloaded with a token, vLLM (the stand-in) given an API key: every answer
    of both launcher ports, scraped through the whole run, and the termination message after
    SIGTERM hold no fragment of either."""
    import shutil

    from tests.support.hub_emulator import HubEmulator

    token, api_key = "hf_MetricsHygiene_7Q2w9E4r6T", "sk-metrics-hygiene-K3y9x8c7v6"
    root = tmp_path / "hub"
    shutil.copytree(Path(__file__).resolve().parent.parent / "models" / "tiny-llama", root / "org" / "tiny-llama")
    with HubEmulator(root, lfs_threshold=100_000) as emulator:
        emulator.gate("org/tiny-llama", {token})
        emulator.rate_limit_bps = 500_000
        env = launcher_env({"HF_ENDPOINT": emulator.url, "HF_TOKEN": token}, home=tmp_path)
        scraped, printed, message = _serve_scrape_and_stop("org/tiny-llama", env, tmp_path, "--api-key", api_key)
    assert '"phase": "weights"' in scraped  # the ports were scraped during the download too
    for secret in (token, api_key):
        assert not leaked(secret, scraped + printed + message), secret


@pytest.mark.slow
def test_no_store_credential_in_metrics_startupz_health_or_the_termination_message(tmp_path):
    """A model streamed from S3 (moto): the key pair reaches vLLM by environment only, and no answer
    of either launcher port, no log line and not the termination message holds any part of it."""
    from tests.support import object_stores as st

    server = st.start_moto(tmp_path)
    try:
        st.upload_s3(server, "models", "tiny-llama", Path(__file__).resolve().parent.parent / "models" / "tiny-llama")
        env = launcher_env(st.s3_env(server), home=tmp_path)
        scraped, printed, message = _serve_scrape_and_stop("s3://models/tiny-llama", env, tmp_path)
    finally:
        server.stop()
    assert 'model="tiny-llama"' in scraped  # kaito_launcher_info names the model served from the store
    for secret in (st.S3_SECRET, st.S3_KEY_ID):
        assert not leaked(secret, scraped + printed + message), (secret, leaked(secret, scraped + printed + message))


def test_a_rejected_token_is_not_in_the_termination_message(hub, tmp_path):
    from tests.conftest import BAD_TOKEN

    target = tmp_path / "termination-log"
    ran = run_cli(["--model", "org/gated", "--weights-dir", str(tmp_path / "w"), "--download-only"],
                  launcher_env({"HF_ENDPOINT": hub.url, "HF_TOKEN": BAD_TOKEN, "KAITO_TERMINATION_LOG": str(target),
                                "KAITO_METRICS_PORT": "0"}, home=tmp_path))
    assert ran.code == 12, ran.output
    message = target.read_text()
    assert message.endswith("(exit 12)\n") and not leaked(BAD_TOKEN, message), message
