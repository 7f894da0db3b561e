"""The vocabulary: plain, frozen value types that cross module boundaries.

Everything may import this module; it imports nothing of the launcher's own except errors.
A value is validated when it is built, so an invalid one never travels further.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

GiB = 1024**3
MiB = 1024**2

# ------------------------------------------------------------------------------------------------
# What the model is and needs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionGeometry:
    """The architecture figures that size the KV cache.

    Standard attention (MHA / GQA / MQA) sets ``num_kv_heads`` and ``head_dim``.
    MLA (DeepSeek-V3 style) sets ``kv_lora_rank`` and ``qk_rope_head_dim`` instead: one latent
    vector per token and layer, not split across tensor-parallel ranks.
    """

    num_layers: int
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        if self.is_mla:
            if not (self.kv_lora_rank and self.qk_rope_head_dim):
                raise ValueError("MLA needs both kv_lora_rank and qk_rope_head_dim")
        elif not (self.num_kv_heads and self.head_dim):
            raise ValueError("standard attention needs num_kv_heads and head_dim")

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV-cache bytes per token for all layers of one full model copy.

        Standard: K and V (x2) per layer per KV head of head_dim elements
        (vLLM ``v1/core/kv_cache_utils.py`` page size, KAITO's BPT generator).
        MLA: one compressed latent (kv_lora_rank) plus the decoupled RoPE key per layer.
        """
        if self.is_mla:
            assert self.kv_lora_rank and self.qk_rope_head_dim
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * dtype_bytes
        assert self.num_kv_heads and self.head_dim
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


LoadFormat = Literal["hf", "mistral"]


@dataclass(frozen=True)
class LoraAdapter:
    """One LoRA adapter folder vLLM serves beside the model (``--lora-modules name=path``),
    as read and checked from its ``adapter_config.json`` before vLLM starts."""

    name: str  # the folder's name: what clients put in "model"
    path: str  # the adapter folder
    rank: int  # LoRA rank ``r``
    base_model: str | None = None  # ``base_model_name_or_path``: what it was trained on

    def __post_init__(self) -> None:
        if not self.name or self.rank < 1:
            raise ValueError(f"LoRA adapter {self.name!r}: a name and a rank >= 1 are needed")


@dataclass(frozen=True)
class WeightsSource:
    """What the weights step needs of a model, and nothing else: where its files are (a hub repo
    at a revision, or a local folder), which format to fetch, and whether the repo is gated."""

    name: str
    repo_id: str | None = None
    revision: str | None = None  # a commit, branch or tag; None = main
    load_format: LoadFormat = "hf"
    local_path: str | None = None
    gated: bool = False
    # An object store: the URI vLLM streams from (s3://, gs://, az://container/prefix) and the
    # version digest of the objects there (their ETags/generations; None until listed).
    store_uri: str | None = None
    store_version: str | None = None


WeightsFiguresSource = Literal["safetensors headers", "file sizes"]


@dataclass(frozen=True)
class WeightsFigures:
    """What the weight files vLLM loads hold, read from their safetensors headers (or, for a
    repo without safetensors, only their sizes: then no parameter figure is known).

    ``parameters_by_dtype`` and ``bytes_by_dtype`` count tensor elements and bytes as stored
    (an int4 AWQ ``qweight`` is I32 there); ``parameter_count`` is the model's own count, with
    packed quantized weights unpacked and quantization scales / zero points left out.
    ``stored_bytes`` is the exact tensor bytes: what a copy of the weights takes in memory.
    """

    source: WeightsFiguresSource
    stored_bytes: int
    files: int
    parameter_count: int | None = None
    parameters_by_dtype: tuple[tuple[str, int], ...] = ()
    bytes_by_dtype: tuple[tuple[str, int], ...] = ()
    quantization: str | None = None  # the method the checkpoint says (config.json quantization_config)
    quantization_bytes: int = 0  # of stored_bytes: scales, zero points, group indices
    note: str | None = None  # why only file sizes are known


@dataclass(frozen=True)
class ModelSpec:
    """What the model is and what vLLM needs to serve it (from a preset, an HF id or a folder)."""

    name: str  # preset name, also vLLM's --served-model-name
    architecture: str  # config.json "architectures"[0]
    weights_bytes: int  # one copy of the files vLLM loads
    max_context: int  # max_position_embeddings
    attention: AttentionGeometry
    dtype: str = "bfloat16"
    quantization: str | None = None
    family: str | None = None
    repo_id: str | None = None  # Hugging Face repo id
    revision: str | None = None  # 40-hex commit pinning weights and code
    local_path: str | None = None  # a folder given with --model, used as is
    params_billions: float | None = None
    vllm_args: tuple[str, ...] = ()  # arguments the model needs (parsers, formats)
    chat_template: str | None = None  # file name under the chat-template folder
    load_format: LoadFormat = "hf"  # which weight files to fetch
    tensor_parallel_allowed: bool = True
    multi_node: bool = False
    lora_allowed: bool = True  # False: the preset refuses LoRA adapters (KAITO's DisallowLoRA)
    gated: bool = False
    notes: str | None = None
    # A known floor on each GPU's total memory (a failure seen below it that the arithmetic misses),
    # and where that floor comes from, for the error message.
    min_gpu_memory_bytes: int | None = None
    min_gpu_memory_reason: str | None = None
    # What vLLM's GPU memory budget depends on beyond the KV geometry (config.json, text_config
    # first); None / 0 / False where the source does not say. The planner states what it assumed.
    vocab_size: int | None = None
    hidden_size: int | None = None
    tie_word_embeddings: bool = False
    num_experts: int | None = None  # routed experts of a mixture-of-experts model
    sliding_window: int | None = None  # tokens a sliding-window layer attends to
    sliding_window_layers: int = 0  # layers with that window; the rest attend to the whole context
    multimodal: bool = False  # a vision tower beside the language model
    weights_figures: WeightsFigures | None = None  # hub models and folders: from the files themselves
    generated_from: str | None = None  # "hub metadata" / "folder metadata": not a catalog preset
    # Streamed from an object store by vLLM (--load-format runai_streamer): the URI as vLLM takes
    # it, and the digest of the objects' versions (ETag / generation) the plan was made from.
    store_uri: str | None = None
    store_version: str | None = None

    @property
    def parameter_count(self) -> int | None:
        """The exact count when the headers were read, else the preset's rounded figure."""
        if self.weights_figures is not None and self.weights_figures.parameter_count is not None:
            return self.weights_figures.parameter_count
        return round(self.params_billions * 1e9) if self.params_billions else None

    @property
    def weights_source(self) -> WeightsSource:
        return WeightsSource(
            self.name, self.repo_id, self.revision, self.load_format, self.local_path, self.gated,
            self.store_uri, self.store_version,
        )

    def __post_init__(self) -> None:
        if self.weights_bytes <= 0:
            raise ValueError(f"{self.name}: weights_bytes must be > 0")
        if self.max_context <= 0:
            raise ValueError(f"{self.name}: max_context must be > 0")
        if self.min_gpu_memory_bytes is not None and self.min_gpu_memory_bytes <= 0:
            raise ValueError(f"{self.name}: min_gpu_memory_bytes must be > 0")
        if not 0 <= self.sliding_window_layers <= self.attention.num_layers:
            raise ValueError(f"{self.name}: sliding_window_layers must be between 0 and the {self.attention.num_layers} layers")
        if self.sliding_window_layers and not self.sliding_window:
            raise ValueError(f"{self.name}: sliding_window_layers needs a sliding_window size")

    @property
    def kv_bytes_per_token(self) -> int:
        return self.attention.kv_bytes_per_token()


# ------------------------------------------------------------------------------------------------
# What this node has
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    index: int  # position among the GPUs this process may use (CUDA order after visibility)
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int]
    pci_bus_id: str | None = None
    mig: bool = False  # this entry is a MIG slice (or a GPU in MIG mode)


@dataclass(frozen=True)
class HostInfo:
    cpu_count: int
    ram_total_bytes: int
    ram_available_bytes: int
    disk_free_bytes: int | None = None  # where the weights go
    disk_path: str | None = None


InventorySource = Literal["nvml", "sku", "assumed", "none"]


@dataclass(frozen=True)
class NodeInventory:
    """What this node (or the node we plan for with --sku / --assume-gpus) has."""

    gpus: tuple[GpuInfo, ...]
    host: HostInfo
    source: InventorySource = "nvml"
    label: str | None = None  # SKU name or the --assume-gpus text
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # e.g. "12.4"
    nvlink: bool = False  # every pair of visible GPUs is NVLink-connected
    nvlink_pairs: tuple[tuple[int, int], ...] = ()  # GPU index pairs NVML reports NVLink P2P for
    no_gpu_reason: str | None = None  # why gpus is empty ("NVML library not found", ...)
    notes: tuple[str, ...] = ()  # warnings found while probing (bad CUDA_VISIBLE_DEVICES, ...)

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)


# ------------------------------------------------------------------------------------------------
# Where this node stands in its group
# ------------------------------------------------------------------------------------------------

TopologySource = Literal["default", "options", "torchrun", "lws", "kaito-statefulset"]


@dataclass(frozen=True)
class Topology:
    nnodes: int = 1
    node_rank: int = 0
    leader_address: str | None = None
    master_port: int = 29501  # vLLM's --master-port default
    source: TopologySource = "default"
    # Fields not given but assumed so a plan can be made without a real group: "node_rank"
    # (taken as 0) and/or "leader_address" (a placeholder). Never set for a real launch.
    assumed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ValueError("nnodes must be >= 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} not in [0, {self.nnodes})")
        if self.nnodes > 1 and not self.leader_address:
            raise ValueError("a multi-node topology needs a leader address")

    @property
    def is_leader(self) -> bool:
        return self.node_rank == 0

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1

    @property
    def group_store_port(self) -> int:
        """Where the leader's launcher hosts the group's store (check-in, heartbeats): the port
        after vLLM's master port, which the leader's vLLM opens only once the group is released."""
        return self.master_port + 1



# ------------------------------------------------------------------------------------------------
# Options: each one declared once, on the field it sets
# ------------------------------------------------------------------------------------------------


class Concern(Enum):
    """The heading an option is listed under in --help and docs/configuration.md (in this order)."""

    MODEL = "Model"
    NODE = "Node and hardware"
    GROUP = "Multi-node group"
    WEIGHTS = "Weights"
    PLAN = "Plan"
    SERVE = "Serving"
    OUTPUT = "Output and logs"


# The commands that take the launch request's options (kaito-run [serve], plan, download,
# export-preset); an option may add doctor or list-presets (see OptionSpec.commands).
LAUNCH_COMMANDS = ("serve", "plan", "download", "export-preset")
ALL_COMMANDS = (*LAUNCH_COMMANDS, "list-presets", "doctor")

# How a value is read from the command line or its environment twin (the CLI maps each kind to
# its parser once): text, int, float, seconds (a duration: finite, from low to high), path (file
# or folder), dir, file, flag (a switch), choice. Numbers are read as kaito_runtime.numbers reads them.
OptionKind = Literal["text", "int", "float", "seconds", "path", "dir", "file", "flag", "choice"]


@dataclass(frozen=True)
class OptionSpec:
    """One option of kaito-run: its flags, environment twin, help and concern. It sits in the
    metadata of the request field it sets (see ``option``), so the field's default and type and
    the option are declared together; the CLI and docs/configuration.md are generated from it."""

    flags: tuple[str, ...]  # "--port"; a short alias after it ("-o")
    help: str
    concern: Concern
    env: str | None = None  # the KAITO_* twin
    kind: OptionKind = "text"
    choices: tuple[str, ...] = ()
    low: float | None = None  # bounds of an int or float (inclusive unless low_open)
    high: float | None = None
    low_open: bool = False
    show_default: bool = False
    commands: tuple[str, ...] = LAUNCH_COMMANDS

    def __post_init__(self) -> None:
        if not self.flags or not self.flags[0].startswith("--"):
            raise ValueError(f"an option's first flag is its long form: {self.flags}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"{self.flags[0]}: choices go with kind='choice' (and only there)")


def option(default: Any, *flags: str, help: str, concern: Concern, **spec: Any) -> Any:
    """A dataclass field that is also an option: ``port: int = option(5000, "--port", ...)``."""
    return field(default=default, metadata={"option": OptionSpec(flags, help, concern, **spec)})

# ------------------------------------------------------------------------------------------------
# What the user asked for (planning overrides)
# ------------------------------------------------------------------------------------------------

ParallelPreference = Literal["auto", "tensor", "replicas"]


@dataclass(frozen=True)
class PlanOverrides:
    """What the user asked of the plan (each field that is an option declares it here)."""

    force_cpu: bool = option(
        False, "--cpu", env="KAITO_CPU", kind="flag", concern=Concern.PLAN,
        help="Use vLLM's CPU backend even when GPUs are present.",
    )
    cpu_cores: str | None = option(
        None, "--cpu-cores", env="KAITO_CPU_CORES", concern=Concern.PLAN,
        help="CPU target: the cores vLLM may use on this node, e.g. 0-3,8 (VLLM_CPU_OMP_THREADS_BIND); "
        "several nodes on one machine each take their own.",
    )
    max_model_len: int | None = option(
        None, "--max-model-len", env="KAITO_MAX_MODEL_LEN", kind="int", concern=Concern.PLAN,
        help="Context length; refused with the numbers when it cannot fit.",
    )
    gpu_memory_utilization: float | None = option(
        None, "--gpu-memory-utilization", env="KAITO_GPU_MEMORY_UTILIZATION", kind="float", low=0.05, high=1.0,
        concern=Concern.PLAN, help="Fraction of each GPU's memory vLLM may use (default: from the free memory seen).",
    )
    tensor_parallel_size: int | None = option(
        None, "--tensor-parallel-size", "-tp", env="KAITO_TENSOR_PARALLEL_SIZE", kind="int", concern=Concern.PLAN,
        help="Override the planned tensor-parallel size.",
    )
    pipeline_parallel_size: int | None = option(
        None, "--pipeline-parallel-size", "-pp", env="KAITO_PIPELINE_PARALLEL_SIZE", kind="int", concern=Concern.PLAN,
        help="Override the planned pipeline-parallel size.",
    )
    kv_cache_dtype: str | None = option(  # "auto" or an fp8 variant
        None, "--kv-cache-dtype", env="KAITO_KV_CACHE_DTYPE", concern=Concern.PLAN,
        help="KV cache dtype, e.g. fp8 (halves KV memory per token).",
    )
    parallel_preference: ParallelPreference = option(
        "auto", "--parallel", env="KAITO_PARALLEL", kind="choice", choices=("auto", "tensor", "replicas"),
        show_default=True, concern=Concern.PLAN,
        help="When one GPU holds the model on a multi-GPU node: shard it (tensor) or run replicas.",
    )
    tensor_parallel_across_nodes: bool = option(
        False, "--tensor-parallel-across-nodes", env="KAITO_TP_ACROSS_NODES", kind="flag", concern=Concern.GROUP,
        help="Multi-node: span tensor parallelism over all nodes instead of pipeline parallel across nodes.",
    )
    # vLLM flags the GPU memory budget depends on, when the user passes them (pass-through or
    # config file); None / False = vLLM's default for the GPU class.
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False


# ------------------------------------------------------------------------------------------------
# What the pinned vLLM does with GPU memory (presets/vllm/memory.yaml, one version line)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchDefault:
    """vLLM's default batch budget for GPUs of at least ``min_memory_gib`` (unless named ``exclude_name``)."""

    min_memory_gib: float
    exclude_name: str
    max_num_batched_tokens: int
    max_num_seqs: int


@dataclass(frozen=True)
class VllmMemoryProfile:
    """The planner's constants for one vLLM version line, read from presets/vllm/memory.yaml
    outside the planner (``kaito_runtime.node.vllm_memory``) and handed to ``plan_launch``.

    ``figures`` (GiB unless named otherwise) are also readable as attributes
    (``profile.block_size``); ``sources`` says where each comes from.
    """

    line: str
    pinned: str
    figures: Mapping[str, Any]
    sources: Mapping[str, str]
    batch_defaults: tuple[BatchDefault, ...]
    cuda_memory_gib: Mapping[str, float]
    cuda_memory_fallback_ratio: float
    calibrated_architectures: frozenset[str]
    assumed_vocab_size: int

    def __getattr__(self, name: str) -> Any:
        figures = self.__dict__.get("figures", {})
        if name in figures:
            return figures[name]
        raise AttributeError(name)


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One line of reasoning shown by --dry-run: what was chosen and why."""

    topic: str
    choice: str
    reason: str


@dataclass(frozen=True)
class GpuMemoryBudget:
    """Per-GPU memory of the chosen layout, in bytes."""

    total: int
    free: int
    usable: int  # total x gpu_memory_utilization
    weights: int  # this GPU's share of the weights
    overhead: int  # CUDA context, activations, graphs (see planner for the source)
    kv_cache: int  # what is left for the KV cache
    kv_bytes_per_token: int  # this GPU's KV bytes per token
    cuda_total: int | None = None  # what CUDA reports as the total (usable = utilization x this)
    non_torch: int = 0  # the parts of overhead, as vLLM's budget has them
    activation: int = 0
    cudagraph: int = 0
    margin: int = 0  # held back because the architecture has no calibration data


Target = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class LaunchPlan:
    model: ModelSpec
    target: Target
    topology: Topology
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1  # independent replicas on this node
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None  # None = hand "auto" to vLLM (see max_model_len_auto)
    max_model_len_auto: bool = False
    kv_cache_dtype: str | None = None
    kv_cache_tokens: int | None = None  # predicted KV capacity in tokens ("GPU KV cache size: N tokens")
    context_limit: int | None = None  # the longest max-model-len (a multiple of 256) the predicted KV holds
    memory: GpuMemoryBudget | None = None
    cpu_kv_cache_gib: int | None = None  # VLLM_CPU_KVCACHE_SPACE
    cpu_threads_bind: str | None = None  # VLLM_CPU_OMP_THREADS_BIND
    cpu_cores: tuple[int, ...] = ()  # CPU target: the cores the user gave (--cpu-cores); () = all
    enforce_eager: bool = False
    gpus_per_node: int | None = None  # GPUs the plan saw on this node (None on CPU)
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


# ------------------------------------------------------------------------------------------------
# What the Hugging Face Hub says about a repository
# ------------------------------------------------------------------------------------------------

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")  # a resolved git commit: 40 lower-case hex digits


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    blob_id: str | None = None  # git blob sha1
    sha256: str | None = None  # LFS files only: the content hash


@dataclass(frozen=True)
class RemoteModel:
    """What the Hub says about one model at one commit."""

    repo_id: str
    revision: str  # the resolved 40-hex commit
    files: tuple[RemoteFile, ...]
    gated: bool = False
    config: dict[str, Any] | None = None  # config.json, when the repo has one
    params: dict[str, Any] | None = None  # Mistral-format params.json, when the repo has one


# --- human figures for byte counts, so every message and view writes sizes the same way ---

KiB = 1024


def format_gib(n_bytes: float | None) -> str:
    """``'79.6 GiB'`` (always GiB, one decimal) for memory and weights; ``'-'`` when unknown (None)."""
    return "-" if n_bytes is None else f"{n_bytes / GiB:.1f} GiB"


def format_bytes(n_bytes: float | None) -> str:
    """The largest fitting unit, for transfer sizes and progress: ``'1.25 GiB'``, ``'512.0 MiB'``,
    ``'3.0 KiB'``, ``'10 B'``; ``'-'`` when unknown (None)."""
    if n_bytes is None:
        return "-"
    size = abs(n_bytes)
    if size >= GiB:
        return f"{n_bytes / GiB:.2f} GiB"
    if size >= MiB:
        return f"{n_bytes / MiB:.1f} MiB"
    if size >= KiB:
        return f"{n_bytes / KiB:.1f} KiB"
    return f"{int(n_bytes)} B"
