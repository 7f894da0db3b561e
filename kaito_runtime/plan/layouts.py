"""Which TP / PP / DP layouts to try on GPUs, best first, and the reason each choice gets.

Applies the user's parallel overrides and vLLM's TP rules (refusing contradictions with
``InputError``); whether a layout fits is judged by the caller with ``layout_fit.evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kaito_runtime.errors import InputError
from kaito_runtime.plan.fit import Fit, Layout, evaluate
from kaito_runtime.plan.memory import utilization_from_free
from kaito_runtime.types import GpuInfo, ModelSpec, PlanOverrides, Topology, VllmMemoryProfile
from kaito_runtime.plan.vllm_rules import tp_rule_violation, valid_tensor_parallel_sizes

# KAITO main's tier: a model under half of one GPU runs as one replica per GPU (TP 1, DP = GPUs).
REPLICA_WEIGHT_FRACTION = 0.5


def candidate_layouts(
    model: ModelSpec, gpus: Sequence[GpuInfo], topo: Topology, o: PlanOverrides, dtype_bytes: int,
    profile: VllmMemoryProfile,
) -> tuple[list[Layout], Callable[[Fit], str]]:
    """Layouts to try, best first, and a function giving the layout decision's reason."""
    g = len(gpus)
    n = topo.nnodes
    total = g * n
    layers = model.attention.num_layers

    def check_tp(tp: int, limit: int) -> None:
        why = tp_rule_violation(model, tp)
        if why is None and tp > limit:
            why = f"tensor-parallel-size {tp} is more than the {limit} GPUs " + ("in the group" if n > 1 else "on this node")
        if why:
            fix = "leave --tensor-parallel-size out to let the planner choose"
            valid = valid_tensor_parallel_sizes(model, limit)
            if valid:
                fix += f"; valid sizes here: {', '.join(map(str, valid))}"
            raise InputError(f"Invalid --tensor-parallel-size {tp} for {model.name}", why=why, fix=fix)

    if n > 1:
        tp, pp = o.tensor_parallel_size, o.pipeline_parallel_size
        if o.tensor_parallel_across_nodes and tp is None and pp is None:
            tp, pp = total, 1
        elif tp is None and pp is None:
            tp = max(t for t in valid_tensor_parallel_sizes(model, g) if g % t == 0)
            pp = total // tp
        elif tp is None:
            assert pp is not None
            if total % pp:
                raise InputError(
                    f"--pipeline-parallel-size {pp} does not split {total} GPUs ({n} nodes x {g})",
                    why="vLLM needs TP x PP = GPUs per node x nodes",
                    fix=f"use a pipeline size that divides {total}",
                )
            tp = total // pp
        elif pp is None:
            if total % tp:
                raise InputError(
                    f"--tensor-parallel-size {tp} does not split {total} GPUs ({n} nodes x {g})",
                    why="vLLM needs TP x PP = GPUs per node x nodes",
                    fix=f"use a tensor-parallel size that divides {total}, normally {g} (GPUs per node)",
                )
            pp = total // tp
        if tp * pp != total:
            raise InputError(
                f"TP {tp} x PP {pp} = {tp * pp} does not match the group's {total} GPUs ({n} nodes x {g})",
                why="vLLM needs TP x PP = GPUs per node x nodes on a multi-node group",
                fix=f"use TP {g} x PP {n} (the convention) or another pair whose product is {total}",
            )
        check_tp(tp, total)
        if tp > g and not o.tensor_parallel_across_nodes:
            raise InputError(
                f"--tensor-parallel-size {tp} spans nodes ({g} GPUs per node)",
                why="Tensor parallel across nodes sends every layer's all-reduce over the network",
                fix=f"use TP {g} x PP {n}, or ask for it explicitly (tensor parallel across nodes)",
            )
        if pp > layers:
            raise InputError(f"PP {pp} is more than {model.name}'s {layers} layers", fix="use fewer nodes or a larger TP")
        layout = Layout(tp, pp)

        def reason(fit: Fit) -> str:
            if o.tensor_parallel_size or o.pipeline_parallel_size or o.tensor_parallel_across_nodes:
                return f"user choice over {n} nodes x {g} GPUs"
            return f"{n} nodes x {g} GPUs: TP within a node, PP across nodes (vLLM/KAITO convention)"

        return [layout], reason

    if o.tensor_parallel_across_nodes:
        raise InputError("Tensor parallel across nodes needs a multi-node group", fix="set the node count (--nnodes) or drop the option")
    pp = o.pipeline_parallel_size or 1
    if o.tensor_parallel_size is not None:
        tp = o.tensor_parallel_size
        check_tp(tp, g)
        if tp * pp > g:
            raise InputError(
                f"TP {tp} x PP {pp} needs {tp * pp} GPUs; this node has {g}",
                fix=f"use TP x PP <= {g}, or run on more nodes",
            )
        dp = g // (tp * pp) if o.parallel_preference == "replicas" else 1
        return [Layout(tp, pp, dp)], lambda fit: "user choice" + (
            f"; {g - fit.layout.tp * pp * fit.layout.dp} GPU(s) left idle" if g > tp * pp * dp else ""
        )

    valid = [t for t in valid_tensor_parallel_sizes(model, g) if t * pp <= g]
    if not valid:
        raise InputError(f"PP {pp} needs more than the {g} GPUs of this node", fix=f"use --pipeline-parallel-size <= {g}")
    largest = max(valid)
    if o.parallel_preference == "tensor":
        return [Layout(largest, pp, 1)], lambda fit: f"user preference: one replica across {largest * pp} GPUs"
    if o.parallel_preference == "replicas":
        return [Layout(t, pp, g // (t * pp)) for t in valid], lambda fit: (
            f"user preference: replicas; smallest TP that fits, {fit.layout.dp} replica(s)"
        )
    # auto
    if g > 1 and pp == 1 and model.weights_bytes < REPLICA_WEIGHT_FRACTION * min(x.total_bytes for x in gpus):
        one = evaluate(model, gpus[:1], Layout(1), _safe_util(gpus, o), dtype_bytes, profile, o)
        wanted = o.max_model_len or model.max_context
        if one.fits(wanted) if o.max_model_len else one.fits_with_margin(wanted):
            return [Layout(1, 1, g)], lambda fit: (
                f"weights are < {REPLICA_WEIGHT_FRACTION:.0%} of one GPU and one GPU holds the full "
                f"{wanted}-token context: one replica per GPU for throughput (KAITO tier); "
                "parallel preference 'tensor' gives one large replica instead"
            )
    # Use as many GPUs as possible, with the largest TP among those (most KV room per replica);
    # phi-3-medium on 8 GPUs: TP 2 x DP 4 rather than TP 5 with 3 GPUs idle.
    order = sorted(valid, key=lambda t: (-(t * pp * (g // (t * pp))), -t))

    def auto_reason(fit: Fit) -> str:
        tp = fit.layout.tp
        if tp * pp == g:
            return f"TP = all {g} GPUs of the node (KAITO convention): most KV room per replica" if g > 1 else "single GPU"
        why = tp_rule_violation(model, g) or f"TP {g} does not fit"
        idle = g - tp * pp * fit.layout.dp
        return f"{why}; TP {tp} x {fit.layout.dp} replica(s) uses the most GPUs" + (f" ({idle} idle)" if idle else "")

    return [Layout(t, pp, g // (t * pp)) for t in order], auto_reason


def _safe_util(gpus: Sequence[GpuInfo], o: PlanOverrides) -> float:
    """Utilization for a what-if evaluation (never raises)."""
    if o.gpu_memory_utilization is not None:
        return o.gpu_memory_utilization
    return max(0.0, utilization_from_free(gpus))

