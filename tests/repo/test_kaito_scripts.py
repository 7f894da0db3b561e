"""The two scripts KAITO's pods call at fixed paths: /workspace/vllm/export_sas_token_for_streaming.sh
(the SAS token reaches the command only through its environment: never printed, never in an
argv) and /workspace/cuda-provision.sh (installs into the hostPath once, as root; one line and
exit 1 otherwise). apt-get is a stand-in on PATH: the real repository is not reachable here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAS = REPO / "entrypoints" / "kaito" / "export_sas_token_for_streaming.sh"
CUDA = REPO / "entrypoints" / "cuda-provision.sh"
TOKEN = "sv=2026-01-01&ss=b&sig=SECRETsig%2Bvalue"

SHOW = ("import os, sys, json; print(json.dumps({'argv': sys.argv, "
        "'has_token': os.environ.get('AZURE_STORAGE_SAS_TOKEN') == %r}))" % TOKEN)


def test_the_sas_token_reaches_the_command_through_its_environment_only(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text(f"AZURE_STORAGE_SAS_TOKEN='{TOKEN}'\nAZURE_STORAGE_ACCOUNT_NAME=acct\n")
    done = subprocess.run([str(SAS), sys.executable, "-c", SHOW], env={"PATH": os.environ["PATH"], "STREAM_ENV_FILE": str(env_file)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert '"has_token": true' in done.stdout
    assert TOKEN not in done.stdout.split('"has_token"')[0] and TOKEN not in done.stderr  # argv and log
    assert "(value not shown)" in done.stderr


def test_the_exec_keeps_the_process_so_signals_reach_the_command(tmp_path):
    done = subprocess.run([str(SAS), "sh", "-c", 'echo "$$ $PPID"'], env={"PATH": os.environ["PATH"], "STREAM_ENV_FILE": str(tmp_path / "none")},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "running without a SAS token" in done.stderr


def test_no_command_is_exit_2_with_one_line():
    done = subprocess.run([str(SAS)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


@pytest.fixture
def fake_apt(tmp_path):
    """An apt-get that 'installs' a toolkit into CUDA_PROVISION_SOURCE and counts its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    (bin_dir / "apt-get").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'case "$1" in install) mkdir -p "$CUDA_PROVISION_SOURCE/bin" "$CUDA_PROVISION_SOURCE/include";'
        ' printf "#!/bin/sh\\necho nvcc 12.9\\n" > "$CUDA_PROVISION_SOURCE/bin/nvcc";'
        ' chmod 755 "$CUDA_PROVISION_SOURCE/bin/nvcc"; echo h > "$CUDA_PROVISION_SOURCE/include/cuda.h";; esac\n'
    )
    (bin_dir / "apt-get").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CUDA_PROVISION_SOURCE": str(tmp_path / "usr-local-cuda"),
           "CUDA_PROVISION_SKIP_REPO": "1"}
    return env, calls


@pytest.mark.skipif(os.geteuid() != 0, reason="cuda-provision.sh installs as root, as KAITO's init container runs it")
def test_cuda_provision_installs_once_into_the_hostpath(tmp_path, fake_apt):
    env, calls = fake_apt
    target = tmp_path / "opt" / "kaito" / "cuda" / "129"
    target.mkdir(parents=True)  # kubelet's hostPath DirectoryOrCreate
    first = subprocess.run(["flock", str(target), str(CUDA), str(target)], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert (target / "bin" / "nvcc").stat().st_mode & 0o111 and (target / "include" / "cuda.h").exists()
    assert "cuda-nvcc-12-9" in calls.read_text() and not list(tmp_path.glob("**/*.partial"))
    again = subprocess.run([str(CUDA), str(target)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already present" in again.stdout
    assert [l.split()[0] for l in calls.read_text().splitlines()].count("install") == 1  # not installed twice


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become another user")
def test_cuda_provision_as_a_non_root_user_is_one_line_and_exit_1(tmp_path, fake_apt):
    env, calls = fake_apt
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(CUDA), str(tmp_path / "t")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and "must run as root" in done.stderr
    assert not calls.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_inference_api_started_as_root_serves_as_kaito_run_as_uid():
    """An image whose default user is root (for the CUDA init container) still serves non-root."""
    code = ("import importlib.util, os, sys; spec = importlib.util.spec_from_file_location('ia', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); sys.modules['ia'] = m; spec.loader.exec_module(m); "
            "m.drop_root(os.environ); print(os.getuid(), os.getgid(), os.getgroups())")
    script = str(REPO / "entrypoints" / "kaito" / "inference_api.py")
    done = subprocess.run([sys.executable, "-c", code, script], env={"KAITO_RUN_AS_UID": "65534", "KAITO_RUN_AS_GID": "65533"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["65534", "65533", "[]"] and "not root" in done.stderr
    bad = subprocess.run([sys.executable, "-c", code, script], env={"KAITO_RUN_AS_UID": "0"}, capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "the uid not 0" in bad.stderr
