"""`kaito-run`: a thin click shell over kaito_runtime.api.

It parses flags (each with an environment-variable twin for container use), calls the API,
prints, and maps errors to exit codes. Arguments after `--` go to vLLM unchanged.
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

from kaito_runtime.errors import KaitoError, StopRequested

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_TOP_LEVEL_FLAGS = ("-h", "--help", "--version")
_IMPLIED_SERVE = "kaito.implied_serve"  # ctx.meta key: the user did not type `serve`

log = logging.getLogger("kaito_runtime.cli")


def option(*decls: str, **attrs):
    """click.option that shows its environment twin in --help."""
    attrs.setdefault("show_envvar", True)
    return click.option(*decls, **attrs)


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


@contextmanager
def _usage_errors_as_json(as_json: bool) -> Iterator[None]:
    """In JSON log mode a usage error (unknown option, bad value, stray word) is one JSON object
    on stderr with its exit code (2) and the usage line, instead of click's Usage/Error text."""
    try:
        yield
    except click.ClickException as error:
        if not as_json:
            raise
        from kaito_runtime.logs import final_error

        context = getattr(error, "ctx", None)
        usage = {"usage": context.get_usage()} if context is not None else {}
        final_error(error.format_message(), error.exit_code, as_json=True, **usage)
        raise click.exceptions.Exit(error.exit_code) from None


class DefaultToServe(click.Group):
    """`kaito-run [OPTIONS]` means `kaito-run serve [OPTIONS]`; `kaito-run doctor` is the other command."""

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
        formatter.write_usage(ctx.command_path, "doctor [OPTIONS]", prefix="   or: ")
        self.format_help_text(ctx, formatter)
        serve_cmd.format_options(serve_ctx, formatter)
        with formatter.section("Commands"):
            formatter.write_dl(
                [
                    ("serve", "Plan, fetch weights and serve (the default command; the options above)."),
                    ("doctor", "Print this node's GPUs, host and place in its group (kaito-run doctor --help)."),
                ]
            )
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


class ServeCommand(click.Command):
    context_class = _ServeContext

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- VLLM_ARGS...]"]


# Graceful-stop exit codes (README's table): SIGTERM is the orchestrator's normal stop, 0;
# SIGINT is Ctrl-C, 128 + 2 as a shell reports it.
_STOP_EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Until vLLM runs (the supervisor installs its own handlers then, and puts these back after),
    SIGTERM and SIGINT raise StopRequested in the step under way, so it unwinds: transfers stop,
    partial files stay, locks are released. A second signal while unwinding exits at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stopping:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(_STOP_EXIT_CODES[signal.Signals(signum)])
        stopping.append(signum)
        raise StopRequested(signal.Signals(signum).name, _STOP_EXIT_CODES[signal.Signals(signum)])

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_EXIT_CODES}
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
    bug: 1, with the traceback at --log-level debug.
    """
    from kaito_runtime import termination

    with termination.ending():  # the termination message file, on every way out
        _guarded_body(body, log_level)


def _guarded_body(body: Callable[[], None], log_level: str) -> None:
    from kaito_runtime import termination
    from kaito_runtime.logs import final_error

    try:
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
    kaito-run --list-presets
    kaito-run --preset NAME --dry-run [--sku SKU | --assume-gpus 4xA100-80GB]
    kaito-run --preset NAME [-- VLLM_ARGS...]
    kaito-run --model ORG/NAME_OR_FOLDER --port 5000
    kaito-run doctor

    Every option can also be set through the environment variable shown beside it.
    """


def _model_options(f):
    options = [
        option("--preset", envvar="KAITO_PRESET", help="Built-in preset name (see --list-presets), or a Hugging Face id ORG/NAME[@REVISION] as KAITO's preset name takes it."),
        option(
            "--model",
            envvar="KAITO_MODEL",
            help="A Hugging Face repo id (org/name) or a local model folder, instead of --preset.",
        ),
        option(
            "--revision",
            envvar="KAITO_REVISION",
            help="Commit, branch or tag for --model ORG/NAME (resolved to a commit and pinned); presets pin their own.",
        ),
        option(
            "--catalog-dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="KAITO_CATALOG_DIR",
            help="Folder of your own preset catalog files (*.yaml, the schema of the built-in presets/); their names must not be built-in names.",
        ),
        option(
            "--served-model-name",
            envvar="KAITO_SERVED_MODEL_NAME",
            help="Name clients use in requests (default: the preset name, or the model folder/repo name).",
        ),
    ]
    return _apply(options, f)


def _apply(decorators, f):
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def _node_options(f):
    options = [
        option(
            "--sku",
            envvar="KAITO_SKU",
            help="Plan for this cloud GPU SKU instead of the local GPUs (e.g. Standard_NC96ads_A100_v4, p5.48xlarge).",
        ),
        option(
            "--assume-gpus",
            envvar="KAITO_ASSUME_GPUS",
            help="Plan for these GPUs instead of the local ones, e.g. 4xA100-80GB or 8xH200.",
        ),
        option("--nnodes", type=int, envvar="KAITO_NNODES", help="Number of nodes in the group (default: from the environment, else 1)."),
        option("--node-rank", type=int, envvar="KAITO_NODE_RANK", help="This node's rank, 0 = leader (default: from the environment)."),
        option(
            "--leader-address",
            envvar="KAITO_LEADER_ADDRESS",
            help="Address of the rank-0 node for torch.distributed rendezvous (default: from the environment).",
        ),
        option("--master-port", type=int, envvar="KAITO_MASTER_PORT", help="Rendezvous port on the leader (default 29501)."),
        option(
            "--weights-dir",
            type=click.Path(path_type=Path),
            envvar="KAITO_WEIGHTS_DIR",
            help="Where weights are stored (default: /workspace/weights when that folder exists, else ~/.cache/huggingface/kaito-weights).",
        ),
    ]
    return _apply(options, f)


def _output_option(f):
    return option(
        "--output",
        "-o",
        type=click.Choice(["text", "json"]),
        envvar="KAITO_OUTPUT",
        help="Format of --list-presets, --dry-run and doctor output on stdout (default: json, on one line, with --log-format json; else text).",
    )(f)


def _settle_output(opts: dict) -> None:
    """-o not given: the log format's. With --log-format json a JSON document is written on one
    line, so that every line a collector reads is JSON; an explicit -o text is honoured (the
    report is what was asked for; the log lines on stderr stay JSON)."""
    opts["output"] = opts["output"] or ("json" if opts["log_format"] == "json" else "text")
    opts["one_line"] = opts["log_format"] == "json"


def _logging_options(f):
    f = option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        envvar="KAITO_LOG_LEVEL",
        show_default=True,
        help="Log verbosity.",
    )(f)
    f = option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        envvar="KAITO_LOG_FORMAT",
        show_default=True,
        help="Log lines as text or as JSON objects (one per line).",
    )(f)
    return f


@main.command(cls=ServeCommand, context_settings=CONTEXT_SETTINGS)
@_model_options
@option("--list-presets", is_flag=True, help="List the built-in presets and exit.")
@option("--export-preset", is_flag=True, envvar="KAITO_EXPORT_PRESET", help="Print the model's preset (generated from hub metadata for ORG/NAME) as a catalog file for --catalog-dir, revision pinned, and exit.")
@option("--dry-run", is_flag=True, envvar="KAITO_DRY_RUN", help="Print the plan and the vLLM command, start nothing.")
@option("--download-only", is_flag=True, envvar="KAITO_DOWNLOAD_ONLY", help="Fetch the weights, then exit (init containers, pre-warming); does not check that the model fits this machine.")
@option(
    "--verify-weights",
    is_flag=True,
    envvar="KAITO_VERIFY_WEIGHTS",
    help="Re-hash a complete local copy of the weights before using it (slow for big models; catches bit rot).",
)
@_output_option
@_node_options
@option("--cpu", "force_cpu", is_flag=True, envvar="KAITO_CPU", help="Use vLLM's CPU backend even when GPUs are present.")
@option("--cpu-cores", envvar="KAITO_CPU_CORES", help="CPU target: the cores vLLM may use on this node, e.g. 0-3,8 (VLLM_CPU_OMP_THREADS_BIND); several nodes on one machine each take their own.")
@option("--max-model-len", type=int, envvar="KAITO_MAX_MODEL_LEN", help="Context length; refused with the numbers when it cannot fit.")
@option(
    "--gpu-memory-utilization",
    type=click.FloatRange(0.05, 1.0),
    envvar="KAITO_GPU_MEMORY_UTILIZATION",
    help="Fraction of each GPU's memory vLLM may use (default: from the free memory seen).",
)
@option("--tensor-parallel-size", "-tp", type=int, envvar="KAITO_TENSOR_PARALLEL_SIZE", help="Override the planned tensor-parallel size.")
@option("--pipeline-parallel-size", "-pp", type=int, envvar="KAITO_PIPELINE_PARALLEL_SIZE", help="Override the planned pipeline-parallel size.")
@option("--kv-cache-dtype", envvar="KAITO_KV_CACHE_DTYPE", help="KV cache dtype, e.g. fp8 (halves KV memory per token).")
@option(
    "--parallel",
    "parallel_preference",
    type=click.Choice(["auto", "tensor", "replicas"]),
    default="auto",
    envvar="KAITO_PARALLEL",
    show_default=True,
    help="When one GPU holds the model on a multi-GPU node: shard it (tensor) or run replicas.",
)
@option(
    "--tensor-parallel-across-nodes",
    is_flag=True,
    envvar="KAITO_TP_ACROSS_NODES",
    help="Multi-node: span tensor parallelism over all nodes instead of pipeline parallel across nodes.",
)
@option("--offline", is_flag=True, envvar="KAITO_OFFLINE", help="Use a complete local copy of the weights; no network (also HF_HUB_OFFLINE=1).")
@option(
    "--token-file",
    type=click.Path(path_type=Path),
    envvar="KAITO_HF_TOKEN_FILE",
    help="File holding the Hugging Face token (a mounted secret). Otherwise HF_TOKEN, then the huggingface_hub login.",
)
@option("--host", default="0.0.0.0", envvar="KAITO_HOST", show_default=True, help="Address vLLM listens on.")
@option("--port", type=click.IntRange(1, 65535), default=5000, envvar="KAITO_PORT", show_default=True, help="Port vLLM listens on (KAITO pods use 5000).")
@option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    envvar="KAITO_CONFIG_FILE",
    help="KAITO inference config YAML; its 'vllm:' flags win over the plan.",
)
@option(
    "--adapters-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="KAITO_ADAPTERS_DIR",
    help="Folder of LoRA adapters, one sub-folder with an adapter_config.json each (KAITO mounts /mnt/adapter); each is served under its folder name.",
)
@option("--chat-template-dir", envvar="KAITO_CHAT_TEMPLATE_DIR", help="Folder of preset chat templates (default /workspace/chat_templates).")
@option("--grace-period", type=click.FloatRange(min=0), default=30.0, envvar="KAITO_GRACE_PERIOD", show_default=True, help="Seconds vLLM gets to stop after SIGTERM before it is killed.")
@option("--plan-report", type=click.Path(dir_okay=False, path_type=Path), envvar="KAITO_PLAN_REPORT", help="Append the plan check (predicted vs vLLM's own KV and weights figures) to this file as one JSON line.")
@option("--ready-timeout", type=click.FloatRange(min=0, min_open=True), envvar="KAITO_READY_TIMEOUT", help="Give up if vLLM is not ready after this many seconds (default: wait).")
@option(
    "--rendezvous-timeout",
    type=click.FloatRange(min=0, min_open=True),
    envvar="KAITO_RENDEZVOUS_TIMEOUT",
    help="Multi-node: seconds for the whole group to check in at the leader before giving up (default 1800).",
)
@option(
    "--join",
    is_flag=True,
    envvar="KAITO_JOIN",
    help="Multi-node worker: learn the model, revision, node count and settings from the leader (needs only the leader's address and this node's rank).",
)
@option(
    "--peer-timeout",
    type=click.FloatRange(min=1),
    envvar="KAITO_PEER_TIMEOUT",
    help="Multi-node: seconds without a heartbeat after which a node counts as lost and the group stops (default 15).",
)
@option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=5090,
    envvar="KAITO_METRICS_PORT",
    show_default=True,
    help="Port of the launcher's own /metrics, /startupz and /health, served for its whole life (0 turns it off).",
)
@option(
    "--startup-http/--no-startup-http",
    default=True,
    envvar="KAITO_STARTUP_HTTP",
    show_default=True,
    help="Answer /health (503 with the phase), /startupz and /metrics on vLLM's port until vLLM takes it over.",
)
@option(
    "--termination-log",
    envvar="KAITO_TERMINATION_LOG",
    help="File for the one-line reason the launcher ended (default: /dev/termination-log when writable; none: off).",
)
@_logging_options
def serve(**opts) -> None:
    """Plan, fetch weights and serve a model with vLLM (the default command).

    Arguments after `--` are passed to vLLM unchanged and win over the plan.
    """
    from kaito_runtime import termination
    from kaito_runtime.logs import setup_logging

    setup_logging(opts["log_format"], opts["log_level"])
    termination.configure(opts["termination_log"])
    _settle_output(opts)

    def body() -> None:
        if opts["list_presets"]:
            _print_presets(opts["output"], opts["one_line"], opts["catalog_dir"])
            return
        from kaito_runtime import api

        request = _request_from_options(opts)
        if opts["export_preset"]:
            click.echo(api.export_preset(request), nl=False)
            return
        if opts["dry_run"]:
            from kaito_runtime import render
            from kaito_runtime.logs import redact  # api registered any --api-key as a secret

            try:
                prepared, launch = api.dry_run(request)
            except api.ModelDoesNotFitError as refused:
                # What is known about the model is worth showing even when it does not fit.
                if opts["output"] == "json":
                    click.echo(redact(render.refusal_json(refused.model, redact(refused.message), refused.token_source,
                                                          refused.warnings, one_line=opts["one_line"])))
                    sys.exit(refused.exit_code)
                click.echo(redact(render.refusal_text(refused.model, refused.warnings)))
                raise
            if opts["output"] == "json":
                text = render.plan_json(prepared, launch, one_line=opts["one_line"])
            else:
                text = render.plan_text(prepared, launch)
            click.echo(redact(text))
            return
        with _stop_on_signals():
            code = api.run(request, download_only=opts["download_only"])
        sys.exit(code)

    _guarded(body, opts["log_level"])


@main.command(context_settings=CONTEXT_SETTINGS)
@_output_option
@_node_options
@_logging_options
def doctor(**opts) -> None:
    """Print this node's GPUs, host and place in its group, as kaito-run sees them."""
    from kaito_runtime import api
    from kaito_runtime import render
    from kaito_runtime.logs import setup_logging

    setup_logging(opts["log_format"], opts["log_level"])
    _settle_output(opts)

    def body() -> None:
        request = api.RuntimeRequest(
            sku=opts["sku"],
            assume_gpus=opts["assume_gpus"],
            nnodes=opts["nnodes"],
            node_rank=opts["node_rank"],
            leader_address=opts["leader_address"],
            master_port=opts["master_port"],
            weights_dir=opts["weights_dir"],
        )
        env = dict(os.environ)
        node = api.probe_node(request, env)
        topo = api.resolve_topology(request, env, planning_only=True)
        if opts["output"] == "json":
            click.echo(render.doctor_json(node, topo, one_line=opts["one_line"]))
        else:
            click.echo(render.doctor_text(node, topo))

    _guarded(body, opts["log_level"])


def _request_from_options(opts: dict):
    from kaito_runtime.api import PlanOverrides, RuntimeRequest

    vllm_args = click.get_current_context().meta.get("kaito.vllm_args", ())
    return RuntimeRequest(
        preset=opts["preset"],
        model=opts["model"],
        revision=opts["revision"],
        served_model_name=opts["served_model_name"],
        overrides=PlanOverrides(
            max_model_len=opts["max_model_len"],
            gpu_memory_utilization=opts["gpu_memory_utilization"],
            tensor_parallel_size=opts["tensor_parallel_size"],
            pipeline_parallel_size=opts["pipeline_parallel_size"],
            kv_cache_dtype=opts["kv_cache_dtype"],
            tensor_parallel_across_nodes=opts["tensor_parallel_across_nodes"],
            parallel_preference=opts["parallel_preference"],
            force_cpu=opts["force_cpu"],
            cpu_cores=opts["cpu_cores"],
        ),
        sku=opts["sku"],
        assume_gpus=opts["assume_gpus"],
        nnodes=opts["nnodes"],
        node_rank=opts["node_rank"],
        leader_address=opts["leader_address"],
        master_port=opts["master_port"],
        weights_dir=opts["weights_dir"],
        offline=opts["offline"],
        token_file=opts["token_file"],
        host=opts["host"],
        port=opts["port"],
        extra_vllm_args=vllm_args,
        config_file=opts["config_file"],
        adapters_dir=opts["adapters_dir"],
        chat_template_dir=opts["chat_template_dir"],
        grace_seconds=opts["grace_period"],
        ready_timeout=opts["ready_timeout"],
        plan_report=opts["plan_report"],
        rendezvous_timeout=opts["rendezvous_timeout"],
        peer_timeout=opts["peer_timeout"],
        join=opts["join"],
        dry_run=opts["dry_run"],
        verify_weights=opts["verify_weights"],
        catalog_dir=opts["catalog_dir"],
        metrics_port=opts["metrics_port"],
        startup_http=opts["startup_http"],
    )


def _print_presets(output: str, one_line: bool, catalog_dir: Path | None = None) -> None:
    from kaito_runtime import api, render

    presets = api.list_presets(catalog_dir)
    click.echo(render.presets_json(presets, one_line=one_line) if output == "json" else render.presets_table(presets))


if __name__ == "__main__":  # pragma: no cover
    logging.captureWarnings(True)
    main()
