"""Every option of kaito-run, as declared on the fields it sets.

An option is declared once, with ``types.option(...)`` on its field: ``RuntimeRequest`` (and the
``PlanOverrides`` inside it) for what a launch uses, ``Presentation`` for how results are shown.
The CLI builds its click options from ``declared_options()``, ``scripts/gen_configuration_docs.py``
writes docs/configuration.md from the CLI, and ``request_from_values`` turns the parsed values
back into a ``RuntimeRequest``: nothing copies an option by hand.

To add an option: add the field with ``option(default, "--flag", env="KAITO_...", help=...,
concern=...)`` to the value it belongs to, then run ``python scripts/gen_configuration_docs.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kaito_runtime.request import RuntimeRequest
from kaito_runtime.types import ALL_COMMANDS, Concern, OptionSpec, PlanOverrides, option


@dataclass(frozen=True)
class Presentation:
    """How kaito-run shows what it does: the report on stdout and the log lines on stderr."""

    output: str | None = option(
        None, "--output", "-o", env="KAITO_OUTPUT", kind="choice", choices=("text", "json"),
        concern=Concern.OUTPUT, commands=ALL_COMMANDS,
        help="Format of the plan, list-presets, export-preset and doctor output on stdout (default: json, "
        "on one line, with --log-format json; else text).",
    )
    log_level: str = option(
        "info", "--log-level", env="KAITO_LOG_LEVEL", kind="choice", choices=("debug", "info", "warning", "error"),
        show_default=True, concern=Concern.OUTPUT, commands=ALL_COMMANDS, help="Log verbosity.",
    )
    log_format: str = option(
        "text", "--log-format", env="KAITO_LOG_FORMAT", kind="choice", choices=("text", "json"),
        show_default=True, concern=Concern.OUTPUT, commands=ALL_COMMANDS,
        help="Log lines as text or as JSON objects (one per line).",
    )


@dataclass(frozen=True)
class DeclaredOption:
    """One option and where its value goes: ``name`` is its field (and the parsed value's key),
    ``owner`` the value that has the field."""

    name: str
    owner: type
    spec: OptionSpec
    default: Any


_OWNERS: tuple[type, ...] = (RuntimeRequest, PlanOverrides, Presentation)


def declared_options() -> tuple[DeclaredOption, ...]:
    """All options, in declaration order (the CLI and the docs list them by concern)."""
    return tuple(_walk())


def _walk() -> Iterator[DeclaredOption]:
    for owner in _OWNERS:
        for f in dataclasses.fields(owner):
            spec = f.metadata.get("option")
            if spec is not None:
                yield DeclaredOption(f.name, owner, spec, f.default)


def request_from_values(values: Mapping[str, Any], *, vllm_args: tuple[str, ...] = (), dry_run: bool = False) -> RuntimeRequest:
    """The request the parsed option values describe (keys: the fields' names; an option a
    command does not take is left at its default)."""
    own: dict[str, Any] = {}
    plan: dict[str, Any] = {}
    for declared in declared_options():
        if declared.name not in values:
            continue
        if declared.owner is RuntimeRequest:
            own[declared.name] = values[declared.name]
        elif declared.owner is PlanOverrides:
            plan[declared.name] = values[declared.name]
    return RuntimeRequest(**own, overrides=PlanOverrides(**plan), extra_vllm_args=tuple(vllm_args), dry_run=dry_run)


def presentation_from_values(values: Mapping[str, Any]) -> Presentation:
    names = {f.name for f in dataclasses.fields(Presentation)}
    return Presentation(**{k: v for k, v in values.items() if k in names})
