"""What vLLM itself computes at start-up on each GPU: its memory budget and its KV block pool.

Follows vLLM's own arithmetic (``gpu_worker.determine_available_memory``, ``kv_cache_utils``):

    requested = ceil(CUDA total x gpu_memory_utilization)
    KV        = requested - weights share - non-torch - activation peak [- CUDA-graph estimate]

per pipeline stage (the smallest stage sets the block count), then turns KV bytes into the token
count vLLM logs ("GPU KV cache size: N tokens" = max concurrency x max-model-len), with
sliding-window layers grouped the way its hybrid allocator groups them.

The constants are one vLLM version line of presets/vllm/memory.yaml, read outside the planner
(``kaito_runtime.node.vllm_memory``) and handed in as a ``VllmMemoryProfile``: this module reads no file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kaito_runtime.types import BatchDefault, GiB, ModelSpec, VllmMemoryProfile

_VOCAB_BYTES = 2  # embeddings and LM head stay 16-bit, also in fp8 / int4 checkpoints
_REFERENCE_BATCH = 8192  # the max_num_batched_tokens every calibration run used


@dataclass(frozen=True)
class BudgetModel:
    """The model figures vLLM's budget depends on (beyond the KV geometry)."""

    architecture: str
    weights_bytes: int  # checkpoint tensor bytes
    num_layers: int
    kv_bytes_per_token_per_layer: int  # on one TP rank, at the KV dtype
    vocab_size: int | None = None
    hidden_size: int | None = None
    tie_word_embeddings: bool = False
    moe: bool = False
    mla: bool = False
    multimodal: bool = False
    sliding_window: int | None = None
    sliding_window_layers: int = 0


@dataclass(frozen=True)
class StageBudget:
    """One GPU of one pipeline stage, in bytes."""

    stage: int
    layers: int
    requested: int
    weights: int
    non_torch: int
    activation: int
    cudagraph: int
    margin: int

    @property
    def overhead(self) -> int:
        return self.non_torch + self.activation + self.cudagraph + self.margin

    @property
    def kv_bytes(self) -> int:
        return self.requested - self.weights - self.overhead


@dataclass(frozen=True)
class KvPool:
    """vLLM's KV block pool on the limiting GPU and what one request of a given length takes."""

    num_blocks: int
    block_size: int
    full_groups: int
    sliding_groups: int
    sliding_window: int
    in_flight_tokens: int
    page_bytes: int = 0  # one block of one group's layers

    def kv_bytes(self, context: int) -> int:
        """KV bytes one request of ``context`` tokens takes on this GPU."""
        return self.blocks_per_request(context) * self.page_bytes

    def blocks_per_request(self, context: int) -> int:
        blocks = self.full_groups * math.ceil(context / self.block_size)
        if self.sliding_groups:
            held = min(self.sliding_window - 1 + self.in_flight_tokens, context)
            blocks += self.sliding_groups * (math.ceil(held / self.block_size) + 1)
        return blocks

    def fits(self, context: int, share: float = 1.0) -> bool:
        """One request of ``context`` tokens fits in ``share`` of the pool (vLLM's start-up check at share 1)."""
        return self.num_blocks > 0 and self.blocks_per_request(context) <= share * self.num_blocks

    def reported_tokens(self, context: int) -> int:
        """What vLLM logs as "GPU KV cache size: N tokens" at this max-model-len."""
        if self.num_blocks <= 0:
            return 0
        return int(self.num_blocks / self.blocks_per_request(context) * context)

    def largest_context(self, limit: int, share: float = 1.0) -> int:
        """The longest max-model-len up to ``limit`` that fits in ``share`` of the pool (at share 1,
        what ``--max-model-len auto`` finds); 0 if none."""
        if not self.fits(1, share):
            return 0
        low, high = 1, limit
        while low < high:
            mid = (low + high + 1) // 2
            if self.fits(mid, share):
                low = mid
            else:
                high = mid - 1
        return low


@dataclass(frozen=True)
class GpuBudget:
    stages: tuple[StageBudget, ...]
    pool: KvPool
    batch_tokens: int
    calibrated: bool

    @property
    def limiting(self) -> StageBudget:
        return min(self.stages, key=lambda s: s.kv_bytes)


def pipeline_partition(num_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage as vLLM splits them (``get_pp_indices``): even shares, the
    remainder going to the stages before the last, the second-to-last first."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def batch_default(profile: VllmMemoryProfile, cuda_total: int, gpu_name: str) -> BatchDefault:
    """The OpenAI server's default batch budget for this GPU (vLLM arg_utils)."""
    for row in profile.batch_defaults:
        excluded = row.exclude_name and row.exclude_name in gpu_name.lower()
        if cuda_total >= row.min_memory_gib * GiB and not excluded:
            return row
    return profile.batch_defaults[-1]


def cuda_total_bytes(profile: VllmMemoryProfile, nvml_name: str, nvml_total: int) -> int:
    """What CUDA reports as this GPU's total (vLLM multiplies it by the utilization)."""
    known = profile.cuda_memory_gib.get(nvml_name)
    if known is not None:
        return int(known * GiB)
    return int(nvml_total * profile.cuda_memory_fallback_ratio)


def _gib(value: float) -> int:
    return int(value * GiB)


def gpu_budget(
    model: BudgetModel,
    profile: VllmMemoryProfile,
    *,
    cuda_total: int,
    gpu_name: str,
    utilization: float,
    tp: int,
    pp: int,
    enforce_eager: bool = False,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
) -> GpuBudget:
    """Every stage's budget on one GPU and the KV block pool vLLM will build."""
    defaults = batch_default(profile, cuda_total, gpu_name)
    batch = max_num_batched_tokens or defaults.max_num_batched_tokens
    seqs = max_num_seqs or defaults.max_num_seqs
    requested = math.ceil(cuda_total * utilization)
    calibrated = model.architecture in profile.calibrated_architectures
    vocab = model.vocab_size or profile.assumed_vocab_size
    vocab_bytes = model.vocab_size * model.hidden_size * _VOCAB_BYTES if model.vocab_size and model.hidden_size else 0
    ends = vocab_bytes * (1 if model.tie_word_embeddings else 2)
    body = max(0, model.weights_bytes - ends)
    if tp > 1:
        non_torch = profile.non_torch_tensor_parallel
    elif pp > 1:
        non_torch = profile.non_torch_pipeline_parallel
    else:
        non_torch = profile.non_torch_single_gpu
    scale = batch / _REFERENCE_BATCH
    stages = []
    parts = pipeline_partition(model.num_layers, pp)
    for index, layers in enumerate(parts):
        first, last = index == 0, index == pp - 1
        share = body * layers / model.num_layers + (ends if pp == 1 else vocab_bytes * (first + last))
        weights = share / tp + _gib(profile.weights_extra)
        if model.multimodal and first and tp > 1:
            weights += profile.multimodal_replicated_fraction * model.weights_bytes * (1 - 1 / tp)
        if last:
            activation = profile.activation_base * scale + profile.activation_per_vocab_seq * vocab * seqs / 1e9
            activation += profile.activation_moe * model.moe + profile.activation_mla * model.mla
            activation += profile.activation_sliding_window * bool(model.sliding_window_layers)
        else:
            activation = profile.activation_pipeline_inner_stage * scale
        cudagraph = 0.0
        if profile.cudagraph_estimate_in_budget and not enforce_eager:
            cudagraph = profile.cudagraph_base + profile.cudagraph_per_layer * layers
        margin = 0.0 if calibrated else profile.uncalibrated_margin
        stages.append(
            StageBudget(index, layers, requested, math.ceil(weights), _gib(non_torch), _gib(activation), _gib(cudagraph), _gib(margin))
        )
    limiting = min(stages, key=lambda s: s.kv_bytes)
    pool = _pool(model, profile, limiting, pp, batch * (profile.in_flight_batches if pp == 1 else pp))
    return GpuBudget(tuple(stages), pool, batch, calibrated)


def _pool(model: BudgetModel, profile: VllmMemoryProfile, stage: StageBudget, pp: int, in_flight: int) -> KvPool:
    """vLLM's hybrid grouping: layers of one attention type split into groups of equal size (the
    smaller type's count, or the larger one when they are within 1.5x), padding the last group."""
    block = profile.block_size
    sliding = model.sliding_window_layers
    full = model.num_layers - sliding
    if sliding and full:
        size = min(full, sliding)
        if max(full, sliding) < 1.5 * size:
            size = max(full, sliding)
        full_groups, sliding_groups = math.ceil(full / size), math.ceil(sliding / size)
        layers_per_group = math.ceil(size / pp)
    else:
        full_groups, sliding_groups = (0, 1) if sliding else (1, 0)
        layers_per_group = stage.layers
    page = model.kv_bytes_per_token_per_layer * block * layers_per_group
    blocks = max(0, stage.kv_bytes) // page if page else 0
    return KvPool(blocks, block, full_groups, sliding_groups, model.sliding_window or 0, in_flight, page)


def kv_bytes_per_layer(model: ModelSpec, tp: int, dtype_bytes: int) -> int:
    """KV bytes one layer stores per token on one TP rank: K and V of the rank's KV heads
    (max(1, kv_heads // TP): replicated beyond the KV head count), or MLA's whole latent
    (kv_lora_rank + qk_rope_head_dim, not split by TP)."""
    att = model.attention
    if att.is_mla:
        assert att.kv_lora_rank and att.qk_rope_head_dim
        return (att.kv_lora_rank + att.qk_rope_head_dim) * dtype_bytes
    assert att.num_kv_heads and att.head_dim
    return 2 * max(1, att.num_kv_heads // tp) * att.head_dim * dtype_bytes


def budget_model(model: ModelSpec, tp: int, dtype_bytes: int) -> BudgetModel:
    """The budget's view of a ``ModelSpec`` at tensor-parallel size ``tp`` and a KV element size."""
    return BudgetModel(
        architecture=model.architecture,
        weights_bytes=model.weights_bytes,
        num_layers=model.attention.num_layers,
        kv_bytes_per_token_per_layer=kv_bytes_per_layer(model, tp, dtype_bytes),
        vocab_size=model.vocab_size,
        hidden_size=model.hidden_size,
        tie_word_embeddings=model.tie_word_embeddings,
        moe=bool(model.num_experts and model.num_experts > 1),
        mla=model.attention.is_mla,
        multimodal=model.multimodal,
        sliding_window=model.sliding_window,
        sliding_window_layers=model.sliding_window_layers,
    )
