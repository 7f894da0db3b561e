"""`kaito-run`: a thin click shell over kaito_runtime.api.

It parses flags (each with an environment-variable twin for container use), calls the API,
prints, and maps errors to exit codes. Arguments after `--` go to vLLM unchanged. The options
are not written here: they are generated from their declarations (``request.options``).
Modes are subcommands (`plan`, `download`, `list-presets`, `export-preset`, `doctor`); the
flags that named them before (`--dry-run`, ...) still work as hidden aliases of `serve`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from kaito_runtime.cli_types import Decimal, Seconds, WholeNumber
from kaito_runtime.errors import GRACEFUL_STOP_EXIT_CODES, KaitoError, StopRequested, shortened
from kaito_runtime.request.options import DeclaredOption, declared_options, presentation_from_values, request_from_values

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_TOP_LEVEL_FLAGS = ("-h", "--help", "--version")
_IMPLIED_SERVE = "kaito.implied_serve"  # ctx.meta key: the user did not type `serve`

log = logging.getLogger("kaito_runtime.cli")


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


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """In every step but vLLM's run (the supervisor installs its own handlers then, and puts
    these back after), SIGTERM and SIGINT raise StopRequested in the step under way, so it
    unwinds: transfers stop, partial files stay, locks are released; a plan or an export stops
    where it is. A second signal while unwinding exits at once with the first one's code
    (errors.GRACEFUL_STOP_EXIT_CODES: 0 for SIGTERM, 130 for SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stopping:
            log.warning("second signal (%s): exiting now", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(GRACEFUL_STOP_EXIT_CODES[stopping[0]])
        stopping.append(signum)
        raise StopRequested(signal.Signals(signum).name, GRACEFUL_STOP_EXIT_CODES[signum])

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(error: KaitoError) -> None:
    from kaito_runtime.logs import final_error

    # A KaitoError's why may quote a server's or a library's message: final_error redacts it.
    final_error(error.message, error.exit_code)
    sys.exit(error.exit_code)


def _guarded(body: Callable[[], None], log_level: str) -> None:
    """Run a command body; every failure ends as one `kaito-run: error:` line and an exit code.

    KaitoError: its own code. OSError (a disk, a permission, a mount): 1. Anything else is a
    bug: 1, with the traceback at --log-level debug. On every way out, the termination message
    file gets the cause (kaito_runtime.termination).
    """
    from kaito_runtime import termination

    with termination.ending():
        _guarded_body(body, log_level)


def _guarded_body(body: Callable[[], None], log_level: str) -> None:
    from kaito_runtime import termination
    from kaito_runtime.logs import final_error

    try:
        with _stop_on_signals():
            body()
    except StopRequested as stop:
        # One line: what was stopped and what was kept (the lock was released on the way out).
        kept = stop.kept or "stopped before vLLM started; nothing was left running"
        log.warning("received %s: %s; exiting %d", stop.signal_name, kept, stop.exit_code)
        termination.note_cause(f"received {stop.signal_name}: {kept}")
        sys.exit(stop.exit_code)
    except KaitoError as error:
        termination.note_cause(error.message)
        _fail(error)
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        debug = log_level.lower() == "debug"
        if debug:
            log.debug("traceback of the error below", exc_info=True)
        if isinstance(error, OSError):
            what = f"{error.strerror or type(error).__name__}"
            where = " ".join(str(f) for f in (error.filename, error.filename2) if f)
            text = f"{what}: {where}" if where else str(error) or what
        else:
            text = f"unexpected {type(error).__name__}: {error}"
        hint = "" if debug else " (run with --log-level debug for the traceback)"
        termination.note_cause(text)
        final_error(f"{text}{hint}", 1)
        sys.exit(1)


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
_MODE_ALIASES = (
    ("--list-presets", None, "list-presets"),
    ("--export-preset", "KAITO_EXPORT_PRESET", "export-preset"),
    ("--dry-run", "KAITO_DRY_RUN", "plan"),
    ("--download-only", "KAITO_DOWNLOAD_ONLY", "download"),
)


def _mode_alias(flag: str, envvar: str | None, command: str) -> click.Option:
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


def _command(name: str, help_text: str, callback: Callable[..., None], *, extra: tuple[click.Option, ...] = (),
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


class _PassThroughCommand(_Command):
    """A command that takes vLLM's arguments after `--`."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- VLLM_ARGS...]"]


class ServeCommand(_PassThroughCommand):
    context_class = _ServeContext


@click.group(name="kaito-run", cls=DefaultToServe, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="kaito-runtime", prog_name="kaito-run")
def main() -> None:
    """Turn this node into a vLLM endpoint for a model preset or a Hugging Face model.

    \b
    kaito-run list-presets
    kaito-run plan --preset NAME [--sku SKU | --assume-gpus 4xA100-80GB]
    kaito-run --preset NAME [-- VLLM_ARGS...]
    kaito-run --model ORG/NAME_OR_FOLDER --port 5000
    kaito-run download --preset NAME
    kaito-run doctor

    Every option can also be set through the environment variable shown beside it.
    """


def _entered(values: dict, body: Callable[[dict, bool], None]) -> None:
    """Set up logging, settle the output format, run ``body(values, one_line)`` guarded."""
    from kaito_runtime.logs import setup_logging

    from kaito_runtime import termination

    shown = presentation_from_values(values)
    setup_logging(shown.log_format, shown.log_level)
    termination.configure(values.get("termination_log"))  # launch commands have the option; others: env, default
    # -o not given: the log format's. With --log-format json a JSON document is written on one
    # line, so that every line a collector reads is JSON; an explicit -o text is honoured.
    values["output"] = shown.output or ("json" if shown.log_format == "json" else "text")
    _guarded(lambda: body(values, shown.log_format == "json"), shown.log_level)


def _request(values: dict, *, dry_run: bool = False):
    vllm_args = click.get_current_context().meta.get("kaito.vllm_args", ())
    return request_from_values(values, vllm_args=vllm_args, dry_run=dry_run)


def _serve(values: dict, one_line: bool, *, download_only: bool = False) -> None:
    from kaito_runtime import api

    sys.exit(api.run(_request(values), download_only=download_only))


def _download(values: dict, one_line: bool) -> None:
    _serve(values, one_line, download_only=True)


def _plan(values: dict, one_line: bool) -> None:
    from kaito_runtime import api, render
    from kaito_runtime.logs import redact  # api registered any --api-key as a secret

    try:
        prepared, launch = api.dry_run(_request(values, dry_run=True))
    except api.ModelDoesNotFitError as refused:
        # What is known about the model is worth showing even when it does not fit.
        if values["output"] == "json":
            click.echo(redact(render.refusal_json(refused.model, redact(refused.message), refused.token_source,
                                                  refused.warnings, one_line=one_line)))
            sys.exit(refused.exit_code)
        click.echo(redact(render.refusal_text(refused.model, refused.warnings)))
        raise
    if values["output"] == "json":
        text = render.plan_json(prepared, launch, one_line=one_line)
    else:
        text = render.plan_text(prepared, launch)
    click.echo(redact(text))


def _export_preset(values: dict, one_line: bool) -> None:
    from kaito_runtime import api

    click.echo(api.export_preset(_request(values)), nl=False)


def _list_presets(values: dict, one_line: bool) -> None:
    from kaito_runtime import api, render

    presets = api.list_presets(values.get("catalog_dir"))
    click.echo(render.presets_json(presets, one_line=one_line) if values["output"] == "json" else render.presets_table(presets))


def _doctor(values: dict, one_line: bool) -> None:
    from kaito_runtime import api, render

    node, topo = api.doctor(_request(values))
    if values["output"] == "json":
        click.echo(render.doctor_json(node, topo, one_line=one_line))
    else:
        click.echo(render.doctor_text(node, topo))


_MODES: dict[str, Callable[[dict, bool], None]] = {
    "list-presets": _list_presets, "export-preset": _export_preset, "plan": _plan, "download": _download,
}


def _serve_or_alias(**values) -> None:
    # The first mode flag given wins, in the order the flags were checked before they became commands.
    chosen = [command for _, _, command in _MODE_ALIASES if values.pop("mode_" + command.replace("-", "_"))]
    _entered(values, _MODES[chosen[0]] if chosen else _serve)


def _callback(body: Callable[[dict, bool], None]) -> Callable[..., None]:
    return lambda **values: _entered(values, body)


main.add_command(_command(
    "serve",
    "Plan, fetch weights and serve a model with vLLM (the default command).\n\n"
    "Arguments after `--` are passed to vLLM unchanged and win over the plan.",
    _serve_or_alias, extra=tuple(_mode_alias(*alias) for alias in _MODE_ALIASES), cls=ServeCommand,
))
main.add_command(_command(
    "plan", "Print the plan and the vLLM command it would start; start nothing (was --dry-run).",
    _callback(_plan), cls=_PassThroughCommand,
))
main.add_command(_command(
    "download",
    "Fetch the weights, then exit (init containers, pre-warming; was --download-only). "
    "Does not check that the model fits this machine.",
    _callback(_download), cls=_PassThroughCommand,
))
main.add_command(_command("list-presets", "List the built-in presets (and --catalog-dir's) and exit.", _callback(_list_presets)))
main.add_command(_command(
    "export-preset",
    "Print the model's preset (generated from hub metadata for ORG/NAME) as a catalog file for "
    "--catalog-dir, revision pinned, and exit.",
    _callback(_export_preset),
))
main.add_command(_command("doctor", "Print this node's GPUs, host and place in its group, as kaito-run sees them.", _callback(_doctor)))


if __name__ == "__main__":  # pragma: no cover
    logging.captureWarnings(True)
    main()
