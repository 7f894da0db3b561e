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

import click

from kaito_runtime.cli_shape import (
    MODE_ALIASES,
    CONTEXT_SETTINGS,
    DefaultToServe,
    ServeCommand,
    make_command,
    mode_alias,
    PassThroughCommand,
)
from kaito_runtime.errors import GRACEFUL_STOP_EXIT_CODES, KaitoError, StopRequested
from kaito_runtime.request.options import presentation_from_values, request_from_values

log = logging.getLogger("kaito_runtime.cli")


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
    chosen = [command for _, _, command in MODE_ALIASES if values.pop("mode_" + command.replace("-", "_"))]
    _entered(values, _MODES[chosen[0]] if chosen else _serve)


def _callback(body: Callable[[dict, bool], None]) -> Callable[..., None]:
    return lambda **values: _entered(values, body)


main.add_command(make_command(
    "serve",
    "Plan, fetch weights and serve a model with vLLM (the default command).\n\n"
    "Arguments after `--` are passed to vLLM unchanged and win over the plan.",
    _serve_or_alias, extra=tuple(mode_alias(*alias) for alias in MODE_ALIASES), cls=ServeCommand,
))
main.add_command(make_command(
    "plan", "Print the plan and the vLLM command it would start; start nothing (was --dry-run).",
    _callback(_plan), cls=PassThroughCommand,
))
main.add_command(make_command(
    "download",
    "Fetch the weights, then exit (init containers, pre-warming; was --download-only). "
    "Does not check that the model fits this machine.",
    _callback(_download), cls=PassThroughCommand,
))
main.add_command(make_command("list-presets", "List the built-in presets (and --catalog-dir's) and exit.", _callback(_list_presets)))
main.add_command(make_command(
    "export-preset",
    "Print the model's preset (generated from hub metadata for ORG/NAME) as a catalog file for "
    "--catalog-dir, revision pinned, and exit.",
    _callback(_export_preset),
))
main.add_command(make_command("doctor", "Print this node's GPUs, host and place in its group, as kaito-run sees them.", _callback(_doctor)))


if __name__ == "__main__":  # pragma: no cover
    logging.captureWarnings(True)
    main()
