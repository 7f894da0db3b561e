"""Rules vLLM itself enforces, shared by the planner, the command builder and the failure hints.

These are not planning choices: they restate what vLLM accepts (valid tensor-parallel sizes, the
CPU backend's head sizes) and how its KV blocks are laid out (context alignment), so a plan or a
user flag that breaks them is refused before vLLM is started.
"""

from __future__ import annotations

from kaito_runtime.types import ModelSpec

# Computed context lengths are rounded down to a multiple of 256: KAITO's rounding, and a
# multiple of every vLLM KV block size (16 .. 256), so no block is left half used.
CONTEXT_ALIGN = 256

# vllm-cpu.md: the CPU attention backend accepts only these head sizes (head_dim 16 starts, then
# every request fails).
CPU_HEAD_DIMS = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})


def tp_rule_violation(model: ModelSpec, tp: int) -> str | None:
    """Why vLLM would refuse this tensor-parallel size for the model, or None when it is valid."""
    att = model.attention
    if tp < 1:
        return f"tensor-parallel-size must be >= 1, got {tp}"
    if tp > 1 and not model.tensor_parallel_allowed:
        return f"{model.name} does not support tensor parallelism (preset: tensor_parallel_allowed false)"
    if att.num_attention_heads and att.num_attention_heads % tp:
        return f"tensor-parallel-size {tp} does not divide the {att.num_attention_heads} attention heads"
    kv = att.num_kv_heads
    if kv and kv % tp and tp % kv:
        return (
            f"tensor-parallel-size {tp} and the {kv} KV heads do not divide one another "
            "(vLLM needs kv_heads % TP == 0 or TP % kv_heads == 0)"
        )
    return None


def valid_tensor_parallel_sizes(model: ModelSpec, limit: int) -> list[int]:
    """Every TP size from 1 to ``limit`` that vLLM accepts for the model, ascending."""
    return [t for t in range(1, limit + 1) if tp_rule_violation(model, t) is None]


def align_down(tokens: int, multiple: int) -> int:
    return (tokens // multiple) * multiple
