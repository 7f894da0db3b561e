"""Each option is declared once (request/options.py): the CLI, docs/configuration.md and the
request fields all come from that declaration, and the modes are subcommands whose old flags
still work."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.support.steps import MODE_ALIASES, main
from kaito_runtime.request import RuntimeRequest
from kaito_runtime.request.options import Presentation, declared_options, request_from_values
from kaito_runtime.types import ALL_COMMANDS, PlanOverrides

REPO = Path(__file__).resolve().parents[2]
# Fields set by something other than an option: the arguments after `--`, the `plan` command,
# HF_ENDPOINT, the nested plan options (declared on PlanOverrides), and the planner's own
# values learnt from the user's vLLM flags.
NOT_OPTIONS = {"extra_vllm_args", "dry_run", "endpoint", "overrides", "max_num_batched_tokens", "max_num_seqs",
               "enforce_eager"}


def _visible_options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and not p.hidden}


def test_every_request_field_is_an_option_or_named_as_not_one():
    for owner in (RuntimeRequest, PlanOverrides, Presentation):
        for f in dataclasses.fields(owner):
            assert ("option" in f.metadata) != (f.name in NOT_OPTIONS), f"{owner.__name__}.{f.name}"


def test_flags_environment_twins_and_names_are_unique():
    declared = declared_options()
    flags = [flag for d in declared for flag in d.spec.flags]
    envs = [d.spec.env for d in declared if d.spec.env]
    names = [d.name for d in declared]
    assert len(flags) == len(set(flags)) and len(envs) == len(set(envs)) and len(names) == len(set(names))
    assert all(env.startswith(("KAITO_",)) for env in envs)


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_each_command_has_exactly_the_declared_options(command):
    options = _visible_options(main.commands[command])
    expected = {d.name: d for d in declared_options() if command in d.spec.commands}
    assert set(options) - {"help"} == set(expected)
    for name, declared in expected.items():
        option = options[name]
        assert tuple(option.opts) == declared.spec.flags
        assert option.envvar == declared.spec.env
        assert option.help == declared.spec.help
        assert option.default == declared.default


def test_the_configuration_page_lists_every_declaration():
    page = (REPO / "docs" / "configuration.md").read_text()
    for declared in declared_options():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{declared.spec.flags[0]}`"))
        assert (f"`{declared.spec.env}`" in row) == bool(declared.spec.env)
        assert " ".join(declared.spec.help.split()) in row.replace("\\|", "|")
    for command in main.commands:
        assert f"kaito-run {command}" in page or command == "serve"


_SAMPLE = {"text": "x1", "int": "7", "float": "2.5", "seconds": "2.5", "path": "/tmp/p", "dir": "/tmp/d", "file": "/tmp/f"}


def test_every_option_reaches_its_request_field():
    """A value given for each option on the command line lands in the field that declares it."""
    args, expected = [], {}
    for d in declared_options():
        if d.owner is Presentation:
            continue
        spec = d.spec
        if spec.kind == "flag":
            args.append(spec.flags[0])
            expected[d.name] = True
        elif spec.kind == "choice":
            value = spec.choices[-1]
            args += [spec.flags[0], value]
            expected[d.name] = value
        else:
            raw = "0.5" if spec.high == 1.0 else _SAMPLE[spec.kind]
            args += [spec.flags[0], raw]
            expected[d.name] = {"int": int, "float": float, "seconds": float}.get(spec.kind, Path if spec.kind in ("path", "dir", "file") else str)(raw)
    serve = main.commands["serve"]
    ctx = serve.make_context("serve", args)
    request = request_from_values(ctx.params, vllm_args=("--x",))
    for name, value in expected.items():
        where = request.overrides if hasattr(request.overrides, name) else request
        assert getattr(where, name) == value, name
    assert request.extra_vllm_args == ("--x",)


def test_environment_twins_reach_the_request():
    ctx = main.commands["serve"].make_context("serve", [])
    assert request_from_values(ctx.params) == RuntimeRequest()
    runner = CliRunner(env={"KAITO_PORT": "6001", "KAITO_MAX_MODEL_LEN": "4096"})
    with runner.isolation():
        ctx = main.commands["serve"].make_context("serve", [])
    request = request_from_values(ctx.params)
    assert request.port == 6001 and request.overrides.max_model_len == 4096


def _invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={"KAITO_LOG_FORMAT": None, **(env or {})})


PLAN = ("--preset", "phi-4-mini-instruct", "--assume-gpus", "1xA100-80GB", "-o", "json")


def test_plan_command_and_the_dry_run_alias_and_its_twin_agree():
    by_command = _invoke("plan", *PLAN)
    by_flag = _invoke(*PLAN, "--dry-run")
    by_env = _invoke(*PLAN, env={"KAITO_DRY_RUN": "1"})
    assert by_command.exit_code == by_flag.exit_code == by_env.exit_code == 0, by_command.output
    # The host's free RAM and disk and the timings move between runs; the plan and command do not.
    keep = lambda text: {k: v for k, v in json.loads(text).items() if k not in ("timings", "inventory")}  # noqa: E731
    assert keep(by_command.stdout) == keep(by_flag.stdout) == keep(by_env.stdout)


def test_list_presets_command_and_alias_agree():
    by_command = _invoke("list-presets", "-o", "json")
    by_flag = _invoke("--list-presets", "-o", "json")
    assert by_command.exit_code == by_flag.exit_code == 0
    assert by_command.stdout == by_flag.stdout and json.loads(by_command.stdout)


def test_mode_aliases_are_hidden_but_each_names_a_command():
    serve = main.commands["serve"]
    hidden = {p.opts[0] for p in serve.params if isinstance(p, click.Option) and p.hidden}
    assert hidden == {flag for flag, _, _ in MODE_ALIASES}
    assert all(command in main.commands for _, _, command in MODE_ALIASES)
    assert "--dry-run" not in _invoke("--help").stdout


def test_a_command_name_after_options_still_picks_the_command():
    result = _invoke("--preset", "phi-4-mini-instruct", "--assume-gpus", "1xA100-80GB", "plan", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]
