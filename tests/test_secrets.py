"""kaito_runtime.secrets: the token never shows itself, is found in the documented order, and is
masked in log records."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import pytest

from kaito_runtime.errors import InputError
from kaito_runtime.secrets import RedactingFilter, Secret, install_redaction, register_secret, resolve_token

TOKEN = "hf_secretvalue_0123456789abcdef"


def test_secret_hides_its_value_everywhere_but_reveal():
    s = Secret(TOKEN)
    for shown in (repr(s), str(s), f"{s}", f"{s:>40}", "%s" % s, repr([s]), repr({"token": s})):
        assert TOKEN not in shown
    assert s.reveal() == TOKEN
    assert s == Secret(TOKEN) and s != Secret("other-token")
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_resolve_order_file_option_then_env_file_then_env_then_stored_login(tmp_path):
    opt = tmp_path / "opt-token"
    opt.write_text("from-option-token\n")
    env_file = tmp_path / "env-token"
    env_file.write_text("from-env-file-token")
    stored = tmp_path / "stored"
    stored.write_text("from-stored-login")
    env = {
        "KAITO_HF_TOKEN_FILE": str(env_file),
        "HF_TOKEN": "from-hf-token-env",
        "HUGGING_FACE_HUB_TOKEN": "from-legacy-env",
        "HF_TOKEN_PATH": str(stored),
    }
    order = [
        ("from-option-token", f"file {opt}"),
        ("from-env-file-token", f"file {env_file}"),
        ("from-hf-token-env", "HF_TOKEN"),
        ("from-legacy-env", "HUGGING_FACE_HUB_TOKEN"),
        ("from-stored-login", f"huggingface_hub login ({stored})"),
    ]
    token, source = resolve_token(env, opt)
    assert (token.reveal(), source) == order[0]
    for expected, key in zip(order[1:], ["KAITO_HF_TOKEN_FILE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", None]):
        token, source = resolve_token(env, None)
        assert (token.reveal(), source) == expected
        if key:
            del env[key]
    del env["HF_TOKEN_PATH"]
    env["HF_HOME"] = str(tmp_path / "empty-home")
    assert resolve_token(env, None) == (None, "none")


def test_blank_env_token_is_ignored(tmp_path):
    assert resolve_token({"HF_TOKEN": "  ", "HF_TOKEN_PATH": str(tmp_path / "none")}, None) == (None, "none")


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_named_token_file_missing_or_empty_is_input_error(tmp_path, content):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as info:
        resolve_token({}, path)
    assert str(path) in str(info.value) and info.value.exit_code == 2
    with pytest.raises(InputError):
        resolve_token({"KAITO_HF_TOKEN_FILE": str(path)}, None)


def test_token_folder_from_a_mounted_secret(tmp_path):
    (tmp_path / "HF_TOKEN").write_text("folder-token-value")
    token, _ = resolve_token({}, tmp_path)
    assert token.reveal() == "folder-token-value"


def _logger_with_redaction() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    install_redaction(handler)
    install_redaction(handler)  # idempotent
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    log = logging.getLogger(f"test-redaction-{id(stream)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, stream


def test_registered_secret_is_masked_in_message_args_and_exception():
    register_secret("hf_registered_secret_42")
    log, stream = _logger_with_redaction()
    log.info("token is hf_registered_secret_42")
    log.info("token is %s and %r", "hf_registered_secret_42", {"t": "hf_registered_secret_42"})
    try:
        raise RuntimeError("failed with hf_registered_secret_42")
    except RuntimeError:
        log.exception("boom")
    out = stream.getvalue()
    assert "hf_registered_secret_42" not in out
    assert out.count("***") >= 4 and "RuntimeError" in out


def test_resolve_token_registers_the_value_for_redaction():
    token, _ = resolve_token({"HF_TOKEN": "hf_auto_registered_777"}, None)
    log, stream = _logger_with_redaction()
    log.warning("leak? %s", token.reveal())
    assert "hf_auto_registered_777" not in stream.getvalue()


def test_resolve_token_reads_a_file_once_per_env_and_again_when_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text("hf_first_value_1234\n")
    reads: list[str] = []
    real = Path.read_text

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    env = {"KAITO_HF_TOKEN_FILE": str(path)}
    first = resolve_token(env, None)
    assert resolve_token(dict(env), None) == first and len(reads) == 1
    # Another environment never gets this one's answer.
    assert resolve_token({"HF_TOKEN": "hf_other_value_5678"}, None) == (Secret("hf_other_value_5678"), "HF_TOKEN")
    assert resolve_token({**env, "HF_TOKEN": "x" * 8}, path) == (Secret("hf_first_value_1234"), f"file {path}")
    # A rotated Secret (new content in place) is read again.
    path.write_text("hf_second_value_abcdef\n")
    assert resolve_token(env, None)[0] == Secret("hf_second_value_abcdef")
    path.unlink()
    with pytest.raises(InputError, match="does not exist"):
        resolve_token(env, None)
