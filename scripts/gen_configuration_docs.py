"""Writes docs/configuration.md from kaito-run's click options (run it after changing an option).

Usage: python scripts/gen_configuration_docs.py [--check]
--check exits 1 when the file on disk differs from what the options say (the test suite runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "docs" / "configuration.md"

HEADER = """# Configuration: every option and its environment variable

Generated from the options themselves by `scripts/gen_configuration_docs.py`; a test fails when
this file and `kaito-run --help` disagree. An option given on the command line wins over its
environment variable. Arguments after `--` go to vLLM unchanged (they win over the plan), and so
do the flags in the `vllm:` section of the KAITO config file (`--config`).
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(param: click.Option) -> str:
    """The default as --help shows it: only for the options that declare show_default."""
    return f"`{param.default}`" if param.show_default and not param.is_flag else ""


def _rows(command: click.Command) -> list[str]:
    ctx = click.Context(command, info_name=command.name)
    rows = ["| option | environment variable | default | what it does |", "|---|---|---|---|"]
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden:
            continue
        names = ", ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])
        envvar = f"`{param.envvar}`" if isinstance(param.envvar, str) else ""
        rows.append(f"| {names} | {envvar} | {_default(param)} | {_cell(param.help or '')} |")
    return rows


def render() -> str:
    from kaito_runtime.cli import main

    parts = [HEADER]
    for name in sorted(main.commands, key=lambda n: (n != "serve", n)):
        command = main.commands[name]
        title = "kaito-run [OPTIONS] [-- VLLM_ARGS...]" if name == "serve" else f"kaito-run {name} [OPTIONS]"
        parts.append(f"## `{title}`\n\n{_cell(command.help or '')}\n")
        parts.append("\n".join(_rows(command)) + "\n")
    return "\n".join(parts)


def main_(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(REPO)} is stale: run python scripts/gen_configuration_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main_(sys.argv[1:]))
