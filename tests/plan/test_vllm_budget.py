"""vLLM's own GPU memory budget and KV block pool (plan/vllm_budget.py), checked against figures
vLLM 0.19.0 really logged (llm-d-planner PR #205, benchmarks/data/vllm_memory_observations.yaml),
and the one pinned vLLM version shared by pyproject, Dockerfile.cuda and the constants table."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from benchmarks.bench_plan_accuracy import DATA, budget_model, choose_line, predict
from kaito_runtime import settings
from kaito_runtime.errors import CatalogError
from tests.support.steps import load_profile, profile_from_table
from kaito_runtime.plan.vllm_budget import BudgetModel, cuda_total_bytes, gpu_budget, pipeline_partition
from kaito_runtime.types import GiB

ROOT = Path(__file__).resolve().parents[2]
TABLE = yaml.safe_load(settings.vllm_memory_table_path().read_text())
OBS = yaml.safe_load(DATA.read_text())
P019 = profile_from_table(TABLE, "0.19")
PINNED = load_profile()


def _obs(obs_id: str) -> tuple[dict, dict]:
    o = next(o for o in OBS["observations"] if o["id"] == obs_id)
    return o, OBS["models"][o["model"]]


def test_one_vllm_version_in_pyproject_dockerfile_and_the_constants_table():
    pinned = TABLE["pinned"]
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert [spec for spec in gpu_extra if spec.startswith("vllm")] == [f"vllm=={pinned}"]
    docker = (ROOT / "Dockerfile.cuda").read_text()
    named = set(re.findall(r"vllm(?:-openai)?(?:==|:v)(\d+\.\d+\.\d+)", docker))
    assert named <= {pinned}, f"Dockerfile.cuda names vLLM {named}, the table is for {pinned}"
    assert named or ".[gpu]" in docker  # the image installs the pinned extra
    assert PINNED.line == "0.32"


def test_every_figure_names_its_source_and_the_pinned_line_states_the_0_32_changes():
    assert all(PINNED.sources[f] for f in PINNED.figures)
    assert PINNED.default_gpu_memory_utilization == 0.92 and P019.default_gpu_memory_utilization == 0.90
    assert PINNED.cudagraph_estimate_in_budget and not P019.cudagraph_estimate_in_budget
    assert PINNED.activation_base == P019.activation_base  # inherited: no 0.32 GPU observation


def test_unknown_line_is_a_catalog_error():
    with pytest.raises(CatalogError, match="no constants for vLLM 0.7"):
        profile_from_table(TABLE, "0.7")


def test_calibrated_architectures_are_exactly_those_observed():
    assert PINNED.calibrated_architectures == {m["architecture"] for m in OBS["models"].values()}


def test_llama_8b_on_h100_matches_vllm_0_19_within_half_a_percent():
    o, m = _obs("meta-llama-llama---h100-80gb--tp1pp1dp1--8192-dtbf16")
    p = predict(o, m, P019)
    assert p["tokens"] == pytest.approx(476_000, rel=0.005)
    assert p["weights_gib"] == pytest.approx(14.99, abs=0.05)  # "Model loading took 14.99 GiB"
    assert p["kv_gib"] == pytest.approx(58.11, abs=0.1)  # "Available KV cache memory: 58.11 GiB"


def test_gemma3_sliding_layers_are_counted_as_vllms_hybrid_allocator_pads_them():
    o, m = _obs("google-gemma-3-27b-it--h100-80gb--tp1pp1dp1--8192")
    model = budget_model(m, "auto", 1)
    budget = gpu_budget(model, P019, cuda_total=int(79.19 * GiB), gpu_name="H100", utilization=0.95, tp=1, pp=1,
                        max_num_batched_tokens=8192, max_num_seqs=1024)
    # 10 full + 52 sliding layers -> groups of 10: 1 full + 6 sliding groups (vLLM: 15,997 blocks, 4.46x)
    assert (budget.pool.full_groups, budget.pool.sliding_groups) == (1, 6)
    assert budget.pool.num_blocks == pytest.approx(15_997, rel=0.03)
    naive = budget.limiting.kv_bytes // (model.kv_bytes_per_token_per_layer * 62)
    assert budget.pool.reported_tokens(8192) < 0.9 * naive  # padding: 62 of 70 layer slots used
    assert budget.pool.reported_tokens(8192) == pytest.approx(36_560, rel=0.03)
    # at long context the sliding groups hold only a window: far more than 8k fits per request
    assert budget.pool.reported_tokens(131072) > 3 * budget.pool.reported_tokens(8192)


def test_qwen_72b_tp2_leaves_about_20k_tokens_and_auto_finds_the_longest_context():
    o, m = _obs("qwen-qwen2-5-72b-instruc--h100-80gb--tp2pp1dp1--8192")
    model = budget_model(m, "auto", 2)
    budget = gpu_budget(model, P019, cuda_total=int(79.19 * GiB), gpu_name="H100", utilization=0.95, tp=2, pp=1,
                        max_num_batched_tokens=8192, max_num_seqs=1024)
    assert budget.pool.fits(8192)  # vLLM ran it at 8,192 (19,920 tokens)
    longest = budget.pool.largest_context(32768)
    assert 19_000 < longest < 21_000 and not budget.pool.fits(32768)


def test_pinned_line_subtracts_the_cuda_graph_estimate_unless_eager():
    _, m = _obs("meta-llama-llama---h100-80gb--tp1pp1dp1--8192-dtbf16")
    kw = dict(cuda_total=int(79.19 * GiB), gpu_name="H100", utilization=0.92, tp=1, pp=1)
    graphs = gpu_budget(budget_model(m, "auto", 1), PINNED, **kw)
    eager = gpu_budget(budget_model(m, "auto", 1), PINNED, enforce_eager=True, **kw)
    assert graphs.limiting.cudagraph > 0.5 * GiB and eager.limiting.cudagraph == 0
    assert eager.pool.num_blocks > graphs.pool.num_blocks


def test_uncalibrated_architecture_keeps_a_stated_margin():
    model = BudgetModel("FalconForCausalLM", 14 * GiB, 32, 2 * 1 * 64 * 2, vocab_size=65024, hidden_size=4544)
    budget = gpu_budget(model, PINNED, cuda_total=int(79.19 * GiB), gpu_name="H100", utilization=0.9, tp=1, pp=1)
    assert not budget.calibrated and budget.limiting.margin == int(PINNED.uncalibrated_margin * GiB)


def test_tensor_parallel_adds_nccl_and_a100_gets_the_small_batch_budget():
    _, m = _obs("meta-llama-llama---h100-80gb--tp1pp1dp1--8192-dtbf16")
    one = gpu_budget(budget_model(m, "auto", 1), PINNED, cuda_total=int(79.32 * GiB), gpu_name="NVIDIA A100-SXM4-80GB", utilization=0.9, tp=1, pp=1)
    two = gpu_budget(budget_model(m, "auto", 2), PINNED, cuda_total=int(79.32 * GiB), gpu_name="NVIDIA A100-SXM4-80GB", utilization=0.9, tp=2, pp=1)
    assert one.batch_tokens == 2048  # vLLM arg_utils: A100 keeps 2048 / 256
    assert two.limiting.non_torch - one.limiting.non_torch > 1.5 * GiB


def test_pipeline_split_and_cuda_totals():
    assert pipeline_partition(61, 2) == [31, 30] and pipeline_partition(32, 3) == [11, 11, 10]
    assert cuda_total_bytes(PINNED, "NVIDIA H100 80GB HBM3", 81559 * 2**20) == int(79.19 * GiB)
    assert cuda_total_bytes(PINNED, "NVIDIA L4", 23034 * 2**20) == int(23034 * 2**20 * 0.986)


def test_benchmark_uses_the_closest_observed_line():
    assert choose_line("0.32.0", {"0.15", "0.19", "0.18"}) == "0.19"
    assert choose_line("0.32.0", {"0.19", "0.32"}) == "0.32"


def test_the_planner_path_of_the_benchmark_uses_the_cuda_total_vllm_logged():
    # predict() runs plan_launch on the GPU named by the SKU table; the CUDA total it budgets
    # with (presets/vllm/memory.yaml) is the one each observed vLLM start-up reported.
    for o in OBS["observations"]:
        if o["vllm_version"].startswith("0.19"):
            got = predict(o, OBS["models"][o["model"]], P019)
            assert got["cuda_total_gib"] == pytest.approx(o["cuda_total_gib"], abs=0.005), o["id"]
