"""The shape of kaito-run's command line, apart from what the commands do (cli.py): the options
generated from their declarations (request.options), one help section per concern, the group
that makes `serve` the default command, the hidden flags that name the modes, and usage errors
as one JSON object in JSON log mode."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from kaito_runtime.cli_types import Decimal, Seconds, WholeNumber
from kaito_runtime.errors import shortened
from kaito_runtime.request.options import DeclaredOption, declared_options

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_TOP_LEVEL_FLAGS = ("-h", "--help", "--version")
_IMPLIED_SERVE = "kaito.implied_serve"  # ctx.meta key: the user did not type `serve`
_JSON_USAGE_ERRORS = "kaito.json_usage_errors"  # ctx.meta key: report a usage error as JSON


def _asks_json_logs(args: list[str]) -> bool:
    """Whether the command line (before `--`; the last --log-format wins), else KAITO_LOG_FORMAT,
    asks for JSON logs: the option parser's own errors come before logging is set up."""
    ours = args[: args.index("--")] if "--" in args else args
    chosen = os.environ.get("KAITO_LOG_FORMAT")
    for i, token in enumerate(ours):
        if token == "--log-format" and i + 1 < len(ours):
            chosen = ours[i + 1]
        elif token.startswith("--log-format="):
            chosen = token.split("=", 1)[1]
    return chosen == "json"


_USAGE_ERROR_CHARS = 2000


@contextmanager
def _usage_errors_as_json(as_json: bool) -> Iterator[None]:
    """In JSON log mode a usage error (unknown option, bad value, stray word) is one JSON object
    on stderr with its exit code (2) and the usage line, instead of click's Usage/Error text."""
    try:
        yield
    except click.ClickException as error:
        # click quotes what was typed (an unknown option, a stray word): bound the line
        error.message = shortened(error.message, _USAGE_ERROR_CHARS)
        if not as_json:
            raise
        from kaito_runtime.logs import final_error

        context = getattr(error, "ctx", None)
        usage = {"usage": context.get_usage()} if context is not None else {}
        final_error(error.format_message(), error.exit_code, as_json=True, **usage)
        raise click.exceptions.Exit(error.exit_code) from None



# ------------------------------------------------------------------------------------------------
# The options, generated from their declarations
# ------------------------------------------------------------------------------------------------

_CONCERN_ORDER = {concern: i for i, concern in enumerate(dict.fromkeys(d.spec.concern for d in declared_options()))}


def _click_type(declared: DeclaredOption) -> click.ParamType | None:
    spec = declared.spec
    kind = spec.kind
    if kind == "choice":
        return click.Choice(list(spec.choices))
    # numbers are read the launcher's one way (kaito_runtime.numbers): ASCII digits, finite values
    if kind == "int":
        return WholeNumber(_bound(spec.low), _bound(spec.high))
    if kind == "float":
        return Decimal(spec.low, spec.high, low_open=spec.low_open)
    if kind == "seconds":
        return Seconds(spec.low or 0.0, spec.high, low_open=spec.low_open)
    if kind == "path":
        return click.Path(path_type=Path)
    if kind == "dir":
        return click.Path(file_okay=False, path_type=Path)
    if kind == "file":
        return click.Path(dir_okay=False, path_type=Path)
    if kind in ("text", "flag"):
        return None
    raise AssertionError(f"{spec.flags[0]}: no parser for option kind {kind!r}")


def _bound(value: float | None) -> int | None:
    return None if value is None else int(value)


def _click_option(declared: DeclaredOption) -> click.Option:
    spec = declared.spec
    return click.Option(
        [*spec.flags, declared.name],
        type=_click_type(declared),
        is_flag=spec.kind == "flag",
        default=declared.default,
        envvar=spec.env,
        show_envvar=True,
        show_default=spec.show_default,
        help=spec.help,
    )


def _declared_for(command: str) -> list[DeclaredOption]:
    chosen = [d for d in declared_options() if command in d.spec.commands]
    return sorted(chosen, key=lambda d: _CONCERN_ORDER[d.spec.concern])  # stable: declaration order within


# The flags that named a mode before the modes became subcommands: hidden on `serve`, they still
# work (KAITO's command lines, scripts), each with its environment twin.
MODE_ALIASES = (
    ("--list-presets", None, "list-presets"),
    ("--export-preset", "KAITO_EXPORT_PRESET", "export-preset"),
    ("--dry-run", "KAITO_DRY_RUN", "plan"),
    ("--download-only", "KAITO_DOWNLOAD_ONLY", "download"),
)


def mode_alias(flag: str, envvar: str | None, command: str) -> click.Option:
    return click.Option([flag, "mode_" + command.replace("-", "_")], is_flag=True, envvar=envvar, hidden=True,
                        help=f"The same as `kaito-run {command}`.")


class _Command(click.Command):
    """A command whose --help lists its options by concern (the declarations' headings)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        concern_of = {d.name: d.spec.concern.value for d in declared_options()}
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(concern_of.get(param.name or "", "Other options"), []).append(record)
        for heading, rows in sections.items():
            with formatter.section(heading):
                formatter.write_dl(rows)


def make_command(name: str, help_text: str, callback: Callable[..., None], *, extra: tuple[click.Option, ...] = (),
             cls: type[click.Command] = _Command) -> click.Command:
    params = [_click_option(d) for d in _declared_for(name)] + list(extra)
    return cls(name, params=params, callback=callback, help=help_text, context_settings=CONTEXT_SETTINGS)

# ------------------------------------------------------------------------------------------------
# The commands
# ------------------------------------------------------------------------------------------------


class DefaultToServe(click.Group):
    """`kaito-run [OPTIONS]` means `kaito-run serve [OPTIONS]`; the modes are the other commands."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        with _usage_errors_as_json(_asks_json_logs(list(args))):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context):
        with _usage_errors_as_json(ctx.meta.get(_JSON_USAGE_ERRORS, False)):
            return super().invoke(ctx)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_JSON_USAGE_ERRORS] = _asks_json_logs(args)
        # Everything after the first `--` belongs to vLLM; click never sees it, so a stray word
        # before `--` is still reported as an unexpected argument.
        if "--" in args:
            cut = args.index("--")
            ctx.meta["kaito.vllm_args"] = tuple(args[cut + 1 :])
            args = args[:cut]
        args = self._command_first(args)
        if not args or (args[0] not in self.commands and args[0] not in _TOP_LEVEL_FLAGS):
            args = ["serve", *args]
            ctx.meta[_IMPLIED_SERVE] = True
        return super().parse_args(ctx, args)

    def _command_first(self, args: list[str]) -> list[str]:
        """`kaito-run -o json doctor` = `kaito-run doctor -o json`: the first command name that
        is not an option's value (`--preset doctor` names a preset) moves to the front."""
        takes_value = {
            name
            for command in self.commands.values()
            for param in command.params
            if isinstance(param, click.Option) and not param.is_flag and not param.count
            for name in param.opts
        }
        for i, token in enumerate(args):
            if token in self.commands:
                if i > 0 and args[i - 1] in takes_value:
                    continue
                return [token, *args[:i], *args[i + 1 :]]
        return args

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The launch options are the ones people look for, so the top-level help shows them."""
        serve_cmd = self.commands["serve"]
        serve_ctx = click.Context(serve_cmd, info_name=ctx.info_name, **serve_cmd.context_settings)
        formatter.write_usage(ctx.command_path, "[OPTIONS] [-- VLLM_ARGS...]")
        formatter.write_usage(ctx.command_path, "COMMAND [OPTIONS]", prefix="   or: ")
        self.format_help_text(ctx, formatter)
        serve_cmd.format_options(serve_ctx, formatter)
        with formatter.section("Commands"):
            formatter.write_dl([(name, self.commands[name].get_short_help_str(80)) for name in self.commands])
        with formatter.section("Other options"):
            formatter.write_dl([("--version", "Show the version and exit.")])


class _ServeContext(click.Context):
    """When `serve` was implied, usage lines and "Try ... for help" name `kaito-run`, the
    command the user typed, not a subcommand they never wrote."""

    @property
    def command_path(self) -> str:
        if self.meta.get(_IMPLIED_SERVE) and self.parent is not None:
            return self.parent.command_path
        return super().command_path


class PassThroughCommand(_Command):
    """A command that takes vLLM's arguments after `--`."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- VLLM_ARGS...]"]


class ServeCommand(PassThroughCommand):
    context_class = _ServeContext


