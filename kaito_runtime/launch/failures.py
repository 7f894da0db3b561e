"""Turn the last lines of a failed vLLM start into one line that names the cause and the fix.

vLLM's messages drift between releases, so every pattern matches loosely (key phrases, optional
punctuation) and numbers are parsed when present but never required. Unknown output gives None:
the caller then shows the child's last lines as they are. "The engine core failed to start" alone
names no cause, so it counts as unknown too; ``failure_report`` builds the whole message either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kaito_runtime.plan.vllm_rules import CONTEXT_ALIGN, CPU_HEAD_DIMS, align_down

if TYPE_CHECKING:
    from kaito_runtime.types import LaunchPlan
    from kaito_runtime.launch.vllm_command import VllmLaunch


def _num(name: str) -> str:
    """A named group for a decimal number such as 3 or 0.92."""
    return rf"(?P<{name}>[0-9]+(?:\.[0-9]+)?)"


@dataclass(frozen=True)
class FailureContext:
    """What the launcher planned, to make a fix concrete (all optional)."""

    gpu_count: int | None = None  # GPUs visible on this node
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    port: int | None = None
    target: str | None = None  # "gpu" or "cpu"
    nnodes: int = 1
    data_parallel_size: int = 1  # replicas: each uses TP x PP GPUs

    @classmethod
    def from_launch(cls, plan: LaunchPlan, launch: VllmLaunch) -> FailureContext:
        """What vLLM really ran: the parallel sizes, utilization, context and port of the merged
        arguments (config file and pass-through included), the GPU count and target of the plan."""
        return cls(
            gpu_count=plan.gpus_per_node,
            tensor_parallel_size=launch.tensor_parallel_size,
            pipeline_parallel_size=launch.pipeline_parallel_size,
            gpu_memory_utilization=launch.gpu_memory_utilization,
            max_model_len=launch.max_model_len,
            port=launch.port,
            target=plan.target,
            nnodes=plan.topology.nnodes,
            data_parallel_size=launch.data_parallel_size,
        )


@dataclass(frozen=True)
class Explanation:
    cause: str  # a stable short name, e.g. "kv-cache-too-small"
    summary: str  # one line: what happened and how to fix it
    evidence: str  # the output line that matched

    @property
    def line(self) -> str:
        return self.summary

    def __str__(self) -> str:
        return self.summary


def _round_len(tokens: int) -> int:
    """A context length to suggest: rounded down to vLLM's KV alignment when that leaves any."""
    return align_down(tokens, CONTEXT_ALIGN) if tokens >= CONTEXT_ALIGN else max(tokens, 1)


def _more_gpus_hint(ctx: FailureContext | None) -> str:
    """ "or use N GPUs" when the node has GPUs the plan leaves idle, else a generic hint.

    Counts every GPU the launch uses on this node: TP x PP x DP over the nodes.
    """
    if ctx and ctx.target == "cpu":
        return "use a machine with more free RAM"
    if ctx and ctx.gpu_count:
        tp, pp, dp = ctx.tensor_parallel_size or 1, ctx.pipeline_parallel_size or 1, ctx.data_parallel_size or 1
        used = max(1, tp * pp * dp // max(1, ctx.nnodes))  # GPUs this node uses
        per_node = " per node" if ctx.nnodes > 1 else ""
        if ctx.gpu_count >= 2 * used:
            return f"use {2 * used} GPUs{per_node} (--tensor-parallel-size {2 * tp})"
        if dp % 2 == 0:
            # every GPU is busy, but fewer, wider replicas give each one more memory
            return (
                f"use fewer, larger replicas (--data-parallel-size {dp // 2} "
                f"--tensor-parallel-size {2 * tp}, same {used} GPUs{per_node})"
            )
        return "use more GPUs (more nodes, or a larger GPU)"
    return "use more GPUs"


def _utilization_hint(ctx: FailureContext | None) -> str:
    if ctx and ctx.target == "cpu":
        return "give the KV cache more RAM (--kv-cache-memory-bytes, or VLLM_CPU_KVCACHE_SPACE in GiB)"
    if ctx and ctx.gpu_memory_utilization is not None:
        return f"raise --gpu-memory-utilization above {ctx.gpu_memory_utilization:g}"
    return "raise --gpu-memory-utilization"


@dataclass(frozen=True)
class _Rule:
    cause: str
    pattern: re.Pattern[str]
    explain: Callable[[re.Match[str], str, FailureContext | None], str]


def _gib_figure(value: str | None) -> str | None:
    """A GiB figure from vLLM's message as printed, or None when missing or rounded to 0 (vLLM
    prints two decimals, so a small KV cache reads "0.0 GiB", which says nothing)."""
    return value if value is not None and float(value) > 0 else None


def _kv_too_small(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    seq_len = m.group("seq")
    rest = text[m.end() :].split("\n", 1)[0]  # the rest of vLLM's message (one line)
    available = re.search(rf"available KV cache memory\s*\(\s*{_num('avail')}\s*GiB", rest, re.I)
    needed = _gib_figure(m.group("need"))
    avail = _gib_figure(available.group("avail") if available else None)
    estimate = re.search(r"estimated maximum model length is\s*(\d+)", rest, re.I)
    fits = f"vLLM estimates at most {int(estimate.group(1)):,} tokens fit" if estimate else None
    if needed and avail:
        cause = f": it needs {needed} GiB but {avail} GiB is available" + (f" ({fits})" if fits else "")
    else:
        cause = f": {fits}" if fits else ""
    limit = (
        f"set --max-model-len <= {_round_len(int(estimate.group(1)))}"
        if estimate
        else "lower --max-model-len"
    )
    return (
        f"the KV cache is too small for max-model-len {seq_len}{cause}. Fix: {limit}, or "
        f"{_more_gpus_hint(ctx)}, or {_utilization_hint(ctx)}"
    )


def _kv_too_small_v0(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    seq_len, tokens = m.group("seq"), int(m.group("tokens"))
    return (
        f"the KV cache holds {tokens} tokens, fewer than max-model-len {seq_len}. Fix: set "
        f"--max-model-len <= {_round_len(tokens)}, or {_more_gpus_hint(ctx)}, or "
        f"{_utilization_hint(ctx)}"
    )


def _no_cache_blocks(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    return (
        "no memory is left for the KV cache after loading the weights. Fix: "
        f"{_utilization_hint(ctx)}, or {_more_gpus_hint(ctx)}, or use a quantized model"
    )


def _free_below_utilization(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    free, total, wanted = float(m.group("free")), float(m.group("total")), m.group("util")
    device = m.group("device") or "the GPU"
    suggestion = int((free / total - 0.02) * 100) / 100
    fix = (
        f"pass --gpu-memory-utilization {suggestion:.2f} or lower, or free the GPU"
        if suggestion > 0.05
        else "free the GPU"
    )
    # vLLM rounds to two decimals: "0.0" means almost nothing, not nothing
    has = f"has only {free:g} of {total:g} GiB free" if free > 0 else f"has almost none of its {total:g} GiB free"
    return (
        f"{device} {has}, less than the requested "
        f"utilization {wanted}; another process holds its memory (often an orphaned "
        f"VLLM::EngineCore from an earlier run: check nvidia-smi). Fix: {fix}"
    )


def _cuda_oom(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    return (
        "the GPU ran out of memory while starting. Fix: lower --gpu-memory-utilization or "
        f"--max-model-len, or {_more_gpus_hint(ctx)}, or add --enforce-eager (no CUDA graphs)"
    )


def _unsupported_architecture(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    names = m.group("archs").strip()
    return (
        f"this vLLM does not support the model architecture {names}. Fix: use a vLLM release "
        "that lists it, or try --model-impl transformers (vLLM's Transformers fallback)"
    )


def _port_in_use(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    bound = re.search(r"bind on address \(\s*'[^']*',\s*(\d+)\s*\)", text)
    port = bound.group(1) if bound else (str(ctx.port) if ctx and ctx.port else None)
    which = f"port {port} is" if port else "the port is"
    return (
        f"{which} already in use (another server is running?). Fix: stop that process or "
        "choose another port with --port"
    )


def _user_len_too_long(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    asked, derived = m.group("asked"), m.group("derived")
    limit = f"<= {derived}" if derived else "to at most the model's context length"
    return (
        f"--max-model-len {asked} is longer than the model's context ({derived or 'see config.json'}). "
        f"Fix: set --max-model-len {limit}"
    )


def _cpu_head_dim(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    return (
        f"vLLM's CPU attention does not support head_dim={m.group('dim')} (it takes "
        f"{_or_list(sorted(CPU_HEAD_DIMS))}). Fix: run this model on a GPU, or pick a model "
        "whose head_dim the CPU backend supports"
    )


def _or_list(values: Sequence[int]) -> str:
    """[1, 2, 3] -> '1, 2 or 3'."""
    text = [str(v) for v in values]
    return ", ".join(text[:-1]) + " or " + text[-1] if len(text) > 1 else "".join(text)


def _engine_failed(m: re.Match[str], text: str, ctx: FailureContext | None) -> str:
    return (
        "its engine core did not start; its own error is in the lines above. Fix: read that "
        "error (often memory or an unsupported setting) and adjust the flags"
    )


# Most specific first: the generic engine-failure rule must lose to any concrete cause.
# Causes that name no concrete problem: explain_failure reports them as unknown (None).
GENERIC_CAUSES = frozenset({"engine-failed"})

_RULES: tuple[_Rule, ...] = (
    _Rule(
        "port-in-use",
        re.compile(r"address already in use|errno 98\b", re.I),
        _port_in_use,
    ),
    _Rule(
        "unsupported-architecture",
        re.compile(
            r"model architectures?\s*(?P<archs>\[[^\]]*\]|\S+)\s*(?:are|is) not supported", re.I
        ),
        _unsupported_architecture,
    ),
    _Rule(
        "cpu-head-dim",
        re.compile(r"unsupported cpu attention configuration:?\s*head_dim\s*=\s*(?P<dim>\d+)", re.I),
        _cpu_head_dim,
    ),
    _Rule(
        "max-model-len-too-long",
        re.compile(
            r"user-specified max_model_len \((?P<asked>\d+)\) is greater than the derived "
            r"max_model_len(?:\s*\([^=)]*=\s*(?P<derived>\d+))?",
            re.I,
        ),
        _user_len_too_long,
    ),
    _Rule(
        "free-memory-below-utilization",
        re.compile(
            rf"free memory on device\s*(?P<device>\S+?)?\s*\(\s*{_num('free')}"
            rf"\s*/\s*{_num('total')}\s*GiB\s*\)\s*on startup is less than "
            rf"desired GPU memory utilization\s*\(\s*{_num('util')}",
            re.I,
        ),
        _free_below_utilization,
    ),
    _Rule(
        "kv-cache-too-small",
        re.compile(
            rf"max seq len\s*\((?P<seq>\d+)\),?\s*\(?\s*(?:{_num('need')}\s*GiB\s*)?"
            r"KV cache is needed",
            re.I,
        ),
        _kv_too_small,
    ),
    _Rule(
        "kv-cache-too-small",
        re.compile(
            r"max seq len\s*\((?P<seq>\d+)\)\s*is larger than the maximum number of tokens that "
            r"can be stored in KV cache\s*\((?P<tokens>\d+)\)",
            re.I,
        ),
        _kv_too_small_v0,
    ),
    _Rule(
        "no-kv-cache-memory",
        re.compile(r"no available memory for the cache blocks", re.I),
        _no_cache_blocks,
    ),
    _Rule(
        "cuda-out-of-memory",
        re.compile(r"CUDA out of memory|OutOfMemoryError", re.I),
        _cuda_oom,
    ),
    _Rule(
        "engine-failed",
        re.compile(
            r"EngineCore failed to start|Engine core initialization failed|EngineDeadError", re.I
        ),
        _engine_failed,
    ),
)


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start : end if end != -1 else len(text)].strip()
    return line if len(line) <= 300 else line[:297] + "..."


def _match(lines: Sequence[str], plan_hint: FailureContext | None) -> Explanation | None:
    text = "\n".join(lines)
    for rule in _RULES:
        match = rule.pattern.search(text)
        if match:
            return Explanation(
                cause=rule.cause,
                summary="vLLM failed to start: " + rule.explain(match, text, plan_hint) + ".",
                evidence=_line_of(text, match.start()),
            )
    return None


def explain_failure(
    lines: Sequence[str], *, plan_hint: FailureContext | None = None
) -> Explanation | None:
    """The known cause in ``lines`` (vLLM's last output lines), or None when unrecognised.

    Only the generic "engine core failed to start" matching counts as unrecognised: the real
    cause is then somewhere in vLLM's own lines, which the caller must show.
    """
    found = _match(lines, plan_hint)
    if found is None or found.cause in GENERIC_CAUSES:
        return None
    return found


def failure_report(
    lines: Sequence[str],
    exit_code: int,
    *,
    plan_hint: FailureContext | None = None,
    tail_lines: int = 20,
    outcome: str | None = None,
    ready_timeout: float | None = None,
) -> str:
    """The message to log when vLLM ended with ``exit_code`` != 0 before it was asked to stop.

    A known cause: its one line. Otherwise vLLM's last ``tail_lines`` lines, then one closing line
    (naming the engine-core failure when that much is known), so the cause does not scroll away
    in long container logs.

    ``outcome`` "ready_timeout" (supervisor.SupervisorResult.outcome): vLLM did not exit by itself,
    we stopped it after ``ready_timeout`` seconds. Its last lines are shown either way, the closing
    line says so, and a cause found in them is named as the likely one.
    """
    found = _match(lines, plan_hint)
    tail = [line for line in lines if line.strip()][-tail_lines:]
    shown = "\n".join(tail) if tail else "(no output)"
    if outcome == "ready_timeout":
        limit = f" ({ready_timeout:g} s)" if ready_timeout is not None else ""
        closing = f"vLLM was not ready within the --ready-timeout{limit} and was stopped"
        if found is not None and found.cause not in GENERIC_CAUSES:
            closing += "; its output names a likely cause: " + found.summary
        return f"vLLM did not become ready; its last lines:\n{shown}\n{closing}"
    if found is not None and found.cause not in GENERIC_CAUSES:
        return found.line
    closing = found.line if found is not None else (
        f"vLLM exited with code {exit_code}; the cause is in its last lines above"
    )
    return f"vLLM exited with code {exit_code}; its last lines:\n{shown}\n{closing}"
