#!/usr/bin/env python3
"""KAITO's /workspace/vllm/inference_api.py, served by kaito-run.

KAITO's controller starts every inference pod with
``python3 /workspace/vllm/inference_api.py --model=<repo> --code-revision=<sha> ...``. This file
takes that command unchanged and becomes ``kaito-run`` (same process, through exec), so the pod
spec, its probes and its Services stay as KAITO generates them:

- flags kaito-run plans with become its options: --model, --code-revision (the model's commit),
  --download-dir (weights folder), --served-model-name, --tensor-parallel-size,
  --pipeline-parallel-size, --gpu-memory-utilization, --max-model-len, --host, --port;
- KAITO's own flags: --kaito-config-file -> --config, --kaito-adapters-dir (default /mnt/adapter,
  used when it exists) -> --adapters-dir, --kaito-kv-cache-cpu-memory-utilization (default 0.5,
  KAITO's) -> --kv-cache-cpu-memory-utilization (vLLM's native CPU KV offload),
  --kaito-disable-rate-limit -> --disable-rate-limit (the 429 guard is on otherwise);
  --kaito-max-probe-steps is dropped with a logged reason;
- KAITO's environment: the port is 5000 + LOCAL_RANK (5001 + LOCAL_RANK for a decode pod,
  KAITO_INFERENCE_ROLE=decode) unless --port is given; DEBUG_MODE=1/true turns on debug logs
  (kaito-run's and vLLM's); KAITO_INFERENCE_ROLE itself is read by kaito-run;
- --distributed-executor-backend=ray: Ray is not used. With it, --pipeline-parallel-size N is the
  node count (KAITO runs one pipeline stage per node) and kaito-run starts vLLM's own mp backend;
  the node's rank comes from POD_INDEX and the leader from the StatefulSet host name;
- everything else goes to vLLM unchanged (after ``--``).

Each mapping is logged on stderr as one line. Bad input (a utilization outside 0..1, a LOCAL_RANK
that is not a number, a role KAITO does not have) is one ``inference_api.py: error:`` line and
exit 2. Only the standard library is used here; kaito-run itself is the ``kaito-run`` of the same
interpreter.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_MODEL_FOLDER = "/workspace/vllm/weights"  # KAITO's wrapper default (a symlink to the weights)
DEFAULT_ADAPTERS_DIR = "/mnt/adapter"
DEFAULT_CONFIG_FILE = "/mnt/config/inference_config.yaml"  # KAITO's ConfigMap mount
DEFAULT_PORT = 5000  # KAITO's; + LOCAL_RANK
DECODE_PORT = 5001  # KAITO serves a decode pod here
DEFAULT_KV_OFFLOAD = "0.5"  # KAITO's default --kaito-kv-cache-cpu-memory-utilization
ROLES = ("prefill", "decode")
_TRUE = ("1", "true", "yes", "on")

# KAITO flag -> kaito-run option (each takes one value).
MAPPED = {
    "--model": "--model",
    "--code-revision": "--revision",
    "--revision": "--revision",
    "--download-dir": "--weights-dir",
    "--served-model-name": "--served-model-name",
    "--kaito-config-file": "--config",
    "--tensor-parallel-size": "--tensor-parallel-size",
    "--pipeline-parallel-size": "--pipeline-parallel-size",
    "--gpu-memory-utilization": "--gpu-memory-utilization",
    "--host": "--host",
    "--port": "--port",
    "--leader-address": "--leader-address",  # from multi-node-serving.sh worker
}
# Flags with a value that are handled here rather than mapped one to one.
SPECIAL = (
    "--max-model-len", "--kaito-adapters-dir", "--distributed-executor-backend",
    "--kaito-kv-cache-cpu-memory-utilization",
)
# KAITO flags without a value -> kaito-run's.
SWITCHES = {"--kaito-disable-rate-limit": "--disable-rate-limit"}
# KAITO-only flags kaito-run has no use for, with the reason logged when one is dropped.
DROPPED = {
    "--kaito-max-probe-steps": "kaito-run plans the context length from the model and the GPUs, without probing",
    "--kaito-model-asset-prefetch-timeout": "kaito-run's object-store step fetches the non-tensor files on every node under its own timeouts",
}


class BadInput(ValueError):
    """One line for the user: what is wrong and how to fix it (exit 2)."""


@dataclass
class KaitoRunArgs:
    """The kaito-run argv built from KAITO's flags, and one line per decision for the log."""

    options: list[str] = field(default_factory=list)
    vllm: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unset_env: list[str] = field(default_factory=list)  # variables the command's own flags replace
    set_env: dict[str, str] = field(default_factory=dict)  # variables for kaito-run and vLLM (DEBUG_MODE)

    def argv(self) -> list[str]:
        return [*self.options, *(["--", *self.vllm] if self.vllm else [])]


def _split(args: Sequence[str], known: set[str]) -> list[tuple[str, str | None, list[str]]]:
    """(flag, value, original tokens) per argument; a known flag takes ``=value`` or the next token."""
    out: list[tuple[str, str | None, list[str]]] = []
    i = 0
    while i < len(args):
        token = args[i]
        name, eq, value = token.partition("=")
        if name in known:
            if eq:
                out.append((name, value, [token]))
            elif i + 1 < len(args):
                out.append((name, args[i + 1], [token, args[i + 1]]))
                i += 1
            else:
                out.append((name, None, [token]))
        else:
            out.append(("", None, [token]))
        i += 1
    return out


def map_flags(
    args: Sequence[str], env: Mapping[str, str], *, exists=os.path.isdir, is_file=os.path.isfile
) -> KaitoRunArgs:
    """KAITO's inference_api.py flags -> kaito-run's argv (pure but for ``exists``/``is_file``)."""
    known = set(MAPPED) | set(SPECIAL) | set(DROPPED)
    m = KaitoRunArgs()
    given: dict[str, str] = {}
    adapters_dir = DEFAULT_ADAPTERS_DIR
    offload = DEFAULT_KV_OFFLOAD
    ray = False
    pending: list[str] = []  # everything not ours, in order
    for name, value, tokens in _split(args, known):
        if not name:
            token = tokens[0]
            if token in SWITCHES:
                m.options.append(SWITCHES[token])
                m.notes.append(f"{token}: the 429 guard is off")
            elif token.startswith("--kaito-"):
                m.notes.append(f"dropped {token}: a KAITO-only flag kaito-run does not know")
            else:
                pending.append(token)
            continue
        if value is None:
            m.notes.append(f"dropped {name}: it needs a value")
            continue
        if name in DROPPED:
            m.notes.append(f"dropped {name}={value}: {DROPPED[name]}")
        elif name == "--kaito-adapters-dir":
            adapters_dir = value
        elif name == "--kaito-kv-cache-cpu-memory-utilization":
            offload = _utilization(value)
        elif name == "--distributed-executor-backend":
            if value == "ray":
                ray = True
                m.notes.append(
                    "--distributed-executor-backend=ray: no Ray here; kaito-run runs vLLM's mp backend "
                    "across the nodes (one pipeline stage per node)"
                )
            else:
                pending += [f"{name}={value}"]
        elif name == "--max-model-len":
            if value.strip().lower() == "auto":
                m.notes.append(
                    "--max-model-len=auto: kaito-run's plan sets the context (the model's full context "
                    "when the fit check finds room for it, else vLLM's auto)"
                )
            else:
                m.options += ["--max-model-len", value]
        else:
            option = MAPPED[name]
            if option in given and given[option] != value:
                m.notes.append(f"{name}={value} replaces {option} {given[option]}")
            given[option] = value
            m.options += [option, value]
    if "--model" in given:
        for var in ("KAITO_PRESET", "KAITO_MODEL"):
            if env.get(var):
                m.unset_env.append(var)
                m.notes.append(f"--model={given['--model']} from the command replaces {var}={env[var]}")
    elif not (env.get("KAITO_PRESET") or env.get("KAITO_MODEL")):
        m.options += ["--model", DEFAULT_MODEL_FOLDER]
        m.notes.append(f"no --model: serving {DEFAULT_MODEL_FOLDER}, KAITO's default")
    if ray:
        nodes = given.get("--pipeline-parallel-size") or env.get("KAITO_NNODES")
        if nodes:
            m.options += ["--nnodes", nodes]
            m.notes.append(f"{nodes} nodes (--pipeline-parallel-size); this node's rank from POD_INDEX={env.get('POD_INDEX', '(unset)')}")
        else:
            m.notes.append("--distributed-executor-backend=ray without --pipeline-parallel-size: a single node")
    if "--leader-address" in given and "--config" not in given and not env.get("KAITO_CONFIG_FILE"):
        # A worker (multi-node-serving.sh) gets no flags from KAITO, but the same ConfigMap mount
        # as its leader: its vllm: flags must be the leader's.
        if is_file(DEFAULT_CONFIG_FILE):
            m.options += ["--config", DEFAULT_CONFIG_FILE]
            m.notes.append(f"worker: using the leader's config file {DEFAULT_CONFIG_FILE}")
    if exists(adapters_dir):
        m.options += ["--adapters-dir", adapters_dir]
    else:
        m.notes.append(f"no adapters folder {adapters_dir}: no LoRA adapters")
    m.options += ["--kv-cache-cpu-memory-utilization", offload]
    _kaito_environment(m, given, env)
    m.vllm = pending
    return m


def _utilization(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 1:
        raise BadInput(
            f"--kaito-kv-cache-cpu-memory-utilization={value}: must be a number from 0 to 1 "
            "(a fraction of the container's free memory; 0 turns CPU KV offload off)"
        )
    return value


def _kaito_environment(m: KaitoRunArgs, given: dict[str, str], env: Mapping[str, str]) -> None:
    """LOCAL_RANK, KAITO_INFERENCE_ROLE and DEBUG_MODE, as KAITO's wrapper reads them."""
    role = env.get("KAITO_INFERENCE_ROLE", "").strip()
    if role and role not in ROLES:
        raise BadInput(f"KAITO_INFERENCE_ROLE={role}: not a role KAITO has; use prefill or decode, or leave it unset")
    rank_text = env.get("LOCAL_RANK", "").strip() or "0"
    if not rank_text.isdigit():
        raise BadInput(f"LOCAL_RANK={rank_text}: must be a whole number (KAITO serves on port 5000 + LOCAL_RANK)")
    if "--port" not in given:
        base = DECODE_PORT if role == "decode" else DEFAULT_PORT
        port = base + int(rank_text)
        if port != DEFAULT_PORT:
            m.options += ["--port", str(port)]
            why = f"LOCAL_RANK={rank_text}" + (", a decode pod" if role == "decode" else "")
            m.notes.append(f"port {port} ({base} + {why}), as KAITO serves")
    if role:
        m.notes.append(f"KAITO_INFERENCE_ROLE={role}: KAITO's Nixl KV transfer config unless the command gives one")
    if env.get("DEBUG_MODE", "").strip().lower() in _TRUE:
        m.options += ["--log-level", "debug"]
        m.set_env["VLLM_LOGGING_LEVEL"] = "DEBUG"
        m.notes.append("DEBUG_MODE: debug logs from kaito-run and vLLM")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        mapped = map_flags(args, os.environ)
    except BadInput as error:
        print(f"inference_api.py: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    for note in mapped.notes:
        print(f"inference_api.py: {note}", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k not in mapped.unset_env}
    env.update(mapped.set_env)
    try:
        drop_root(env)
    except BadInput as error:
        print(f"inference_api.py: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    os.execve(*kaito_run(mapped.argv()), env)  # kaito-run takes this process: signals reach it directly


def drop_root(env: Mapping[str, str]) -> None:
    """Started as root with KAITO_RUN_AS_UID set (an image whose default user is root, so that
    KAITO's cuda-toolkit-provisioner init container can use apt): serve as that uid/gid instead,
    with no supplementary groups. Not root, or no such variable: nothing changes."""
    uid_text = env.get("KAITO_RUN_AS_UID", "").strip()
    if os.geteuid() != 0 or not uid_text:
        return
    gid_text = env.get("KAITO_RUN_AS_GID", "").strip() or uid_text
    if not (uid_text.isdigit() and gid_text.isdigit()) or int(uid_text) == 0:
        raise BadInput(f"KAITO_RUN_AS_UID={uid_text} KAITO_RUN_AS_GID={gid_text}: must be numbers, the uid not 0")
    os.setgroups([])
    os.setgid(int(gid_text))
    os.setuid(int(uid_text))
    print(f"inference_api.py: serving as uid {uid_text}, gid {gid_text} (KAITO_RUN_AS_UID), not root", file=sys.stderr, flush=True)


def kaito_run(args: Sequence[str]) -> tuple[str, list[str]]:
    """kaito-run of this interpreter: its console script beside it, else ``python -m``."""
    script = os.path.join(os.path.dirname(sys.executable), "kaito-run")
    if os.access(script, os.X_OK):
        return script, [script, *args]
    return sys.executable, [sys.executable, "-m", "kaito_runtime.cli", *args]


if __name__ == "__main__":
    main()
