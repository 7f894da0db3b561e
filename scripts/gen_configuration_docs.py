"""Writes docs/configuration.md from the option declarations (run it after changing an option).

Usage: python scripts/gen_configuration_docs.py [--check]
--check exits 1 when the file on disk differs from what the declarations say (the test suite runs it).

The options are declared once, on the request fields they set (``kaito_runtime.request.options``);
the CLI builds its click options from the same declarations, so this page, ``kaito-run --help`` and
the request agree by construction. The commands and their one-line help come from the CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "docs" / "configuration.md"

HEADER = """# Configuration: every option and its environment variable

Generated from the option declarations by `scripts/gen_configuration_docs.py`; a test fails when
this file and the declarations disagree. An option given on the command line wins over its
environment variable. Arguments after `--` go to vLLM unchanged (they win over the plan), and so
do the flags in the `vllm:` section of the KAITO config file (`--config`).
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(declared) -> str:
    """The default as --help shows it: only for the options that declare show_default."""
    spec = declared.spec
    return f"`{declared.default}`" if spec.show_default and spec.kind != "flag" else ""


def _commands_section(main) -> str:
    rows = ["| command | what it does |", "|---|---|"]
    for name, command in main.commands.items():
        ctx = click.Context(command, info_name=name)
        pass_through = " [-- VLLM_ARGS...]" if "[-- VLLM_ARGS...]" in command.collect_usage_pieces(ctx) else ""
        typed = f"kaito-run {'[serve]' if name == 'serve' else name} [OPTIONS]{pass_through}"
        rows.append(f"| `{typed}` | {_cell(command.help or '')} |")
    aliases = ", ".join(f"`{flag}` = `{command}`" for flag, _, command in _mode_aliases())
    return (
        "## Commands\n\n" + "\n".join(rows) + "\n\n"
        f"The flags that named these modes before they were commands still work on `serve`, hidden: {aliases}.\n"
    )


def _mode_aliases():
    from kaito_runtime.cli import MODE_ALIASES

    return MODE_ALIASES


def _options_section() -> str:
    from kaito_runtime.request.options import declared_options

    by_concern: dict = {}
    for declared in declared_options():
        by_concern.setdefault(declared.spec.concern, []).append(declared)
    parts = []
    for concern, options in by_concern.items():
        rows = ["| option | environment variable | default | commands | what it does |", "|---|---|---|---|---|"]
        for d in options:
            names = ", ".join(f"`{flag}`" for flag in d.spec.flags)
            envvar = f"`{d.spec.env}`" if d.spec.env else ""
            commands = "all" if len(d.spec.commands) >= 6 else ", ".join(d.spec.commands)
            rows.append(f"| {names} | {envvar} | {_default(d)} | {commands} | {_cell(d.spec.help)} |")
        parts.append(f"## {concern.value}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def render() -> str:
    from kaito_runtime.cli import main

    return "\n".join([HEADER, _commands_section(main), _options_section()])


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
