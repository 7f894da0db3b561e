"""After vLLM has started: what it reports about its memory, against what the plan predicted.

vLLM logs its own figures once at start-up (rank 0; the GPU and CPU backends word them apart):
  GPU  "Model loading took 14.99 GiB memory and 14.4 seconds"
       "Available KV cache memory: 58.11 GiB"
       "GPU KV cache size: 476,016 tokens" (0.32 adds ", Maximum concurrency for 8,192 tokens per request: 58.11x")
  CPU  "Checkpoint size: 0.00 GiB."
       "Explicitly set (1.0/8.21) GiB for KV cache on node 0."
       "CPU KV cache size: 2,097,152 tokens, Maximum concurrency for 256 tokens per request: 8192.00x"
``StartupReader.feed`` picks them out of the output stream (from the supervisor's output thread);
``PlanCheck`` is the one record: a log line, JSON fields, and whether it over-predicted.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
import threading
from dataclasses import asdict, dataclass

from kaito_runtime.types import GiB, LaunchPlan

# A prediction more than this far above what vLLM has is a warning (the plan promised KV that is not there).
OVER_PREDICTION_WARNING = 0.10

_PATTERNS = {
    "loaded_gib": re.compile(r"Model loading took (\d+(?:\.\d+)?) GiB"),
    "checkpoint_gib": re.compile(r"Checkpoint size: (\d+(?:\.\d+)?) GiB"),
    "kv_cache_gib": re.compile(r"Available KV cache memory: (-?\d+(?:\.\d+)?) GiB"),
    "cpu_kv_cache_gib": re.compile(r"(?:Explicitly|Auto) set \((\d+(?:\.\d+)?)/[\d.]+\) GiB for KV cache"),
    "kv_tokens": re.compile(r"\b[A-Z]+(?: \+ host)? KV cache size: ([\d,]+) tokens"),
    "concurrency": re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: (\d+(?:\.\d+)?)x"),
}


class StartupReader:
    """Collects the first value of each memory line vLLM prints (rank 0 logs them first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, tuple[str, ...]] = {}

    def feed(self, line: str) -> None:
        if "GiB" not in line and "tokens" not in line:
            return
        for name, pattern in _PATTERNS.items():
            match = pattern.search(line)
            if match:
                with self._lock:
                    self.values.setdefault(name, match.groups())

    def number(self, name: str) -> float | None:
        with self._lock:
            groups = self.values.get(name)
        return float(groups[0].replace(",", "")) if groups else None

    def concurrency(self) -> tuple[int, float] | None:
        with self._lock:
            groups = self.values.get("concurrency")
        return (int(groups[0].replace(",", "")), float(groups[1])) if groups else None


@dataclass(frozen=True)
class PlanCheck:
    model: str
    layout: str
    target: str
    predicted_kv_tokens: int | None
    vllm_kv_tokens: int | None
    predicted_weights_gib: float | None
    vllm_weights_gib: float | None
    weights_kind: str  # "loaded" (GPU: Model loading took) or "checkpoint" (CPU: Checkpoint size)
    vllm_kv_cache_gib: float | None
    vllm_max_concurrency: float | None
    vllm_context: int | None

    @property
    def kv_error(self) -> float | None:
        if not self.predicted_kv_tokens or not self.vllm_kv_tokens:
            return None
        return (self.predicted_kv_tokens - self.vllm_kv_tokens) / self.vllm_kv_tokens

    @property
    def over_predicted(self) -> bool:
        error = self.kv_error
        return error is not None and error > OVER_PREDICTION_WARNING

    def line(self) -> str:
        def tokens(value: int | None) -> str:
            return f"{value:,}" if value is not None else "?"

        error = self.kv_error
        text = f"plan check: KV predicted {tokens(self.predicted_kv_tokens)} tokens, vLLM has {tokens(self.vllm_kv_tokens)}"
        if error is not None:
            text += f" ({error * 100:+.1f} %)"
        predicted = f"{self.predicted_weights_gib:.1f} GiB" if self.predicted_weights_gib is not None else "?"
        seen = f"{self.vllm_weights_gib:.2f} GiB" if self.vllm_weights_gib is not None else "not reported"
        return text + f"; weights predicted {predicted}, {self.weights_kind} {seen}"

    def warning(self) -> str | None:
        if not self.over_predicted:
            return None
        assert self.kv_error is not None
        return (
            f"the plan over-predicted KV capacity by {self.kv_error * 100:.1f} % for {self.model} at {self.layout}: "
            "vLLM holds fewer concurrent tokens than planned; send this record (--plan-report) so the "
            "planner's constants can be recalibrated"
        )

    def fields(self) -> dict[str, object]:
        record = asdict(self)
        record["kv_error"] = self.kv_error
        return record


def check_plan(plan: LaunchPlan, reader: StartupReader) -> PlanCheck:
    """The plan's predictions next to vLLM's own figures."""
    layout = f"TP {plan.tensor_parallel_size} x PP {plan.pipeline_parallel_size}"
    if plan.target == "cpu":
        weights, kind = plan.model.weights_bytes / GiB, "checkpoint"
        seen, kv_gib = reader.number("checkpoint_gib"), reader.number("cpu_kv_cache_gib")
    else:
        weights = plan.memory.weights / GiB if plan.memory else None
        kind, seen, kv_gib = "loaded", reader.number("loaded_gib"), reader.number("kv_cache_gib")
    tokens = reader.number("kv_tokens")
    concurrency = reader.concurrency()
    return PlanCheck(
        model=plan.model.name,
        layout=layout,
        target=plan.target,
        predicted_kv_tokens=plan.kv_cache_tokens,
        vllm_kv_tokens=int(tokens) if tokens is not None else None,
        predicted_weights_gib=weights,
        vllm_weights_gib=seen,
        weights_kind=kind,
        vllm_kv_cache_gib=kv_gib,
        vllm_max_concurrency=concurrency[1] if concurrency else None,
        vllm_context=concurrency[0] if concurrency else None,
    )


def append_record(check: PlanCheck, path: Path) -> None:
    """Append ``check`` to ``path`` as one JSON line (created if missing)."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **check.fields()}
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
