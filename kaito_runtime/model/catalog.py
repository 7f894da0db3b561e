"""Load and validate the preset catalog (``presets/*.yaml``) and look presets up by name.

Each family file is parsed, checked field by field (pydantic, unknown keys rejected), then checked
for consistency (attention geometry against the declared KV bytes per token, weight format against
the vLLM flags, duplicate names across files). The first problem found becomes one
``CatalogError`` naming the file, the preset and the field. Valid entries become ``ModelSpec``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import kaito_runtime.settings as data
from kaito_runtime.errors import CatalogError, UnknownPresetError, shortened
from kaito_runtime.vllm_flags import group, last_value
from kaito_runtime.types import GiB, AttentionGeometry, ModelSpec
from kaito_runtime.yaml_bounds import YamlBoundsError, load_bounded, read_bounded_text

log = logging.getLogger("kaito_runtime.model")

HUB_ID_EXAMPLE = "Qwen/Qwen3-0.6B"  # what an unknown preset name is told to use instead
_HEX40 = re.compile(r"[0-9a-f]{40}")

# Flags the launcher computes itself (or refuses to pass); a preset must not carry them.
_RESERVED_FLAGS = {
    "--model": "the launcher passes the model folder itself",
    "--served-model-name": "the preset name is the served name",
    "--revision": "the pinned revision field is used for the download",
    "--tokenizer-revision": "the pinned revision field is used for the download",
    "--code-revision": "the pinned revision field is used for the download",
    "--tensor-parallel-size": "the planner chooses parallelism",
    "--pipeline-parallel-size": "the planner chooses parallelism",
    "--max-model-len": "the planner chooses the context length",
    "--gpu-memory-utilization": "the planner chooses memory use",
    "--chat-template": "use the chat_template field",
    "--trust-remote-code": "it executes code from the model repository",
}

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Attention(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    num_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    kv_lora_rank: PositiveInt | None = None
    qk_rope_head_dim: PositiveInt | None = None


class _Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    repo_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")]
    revision: str
    weights_gib: PositiveFloat
    # The exact bytes of the weight tensors (an exported preset carries them from the safetensors
    # headers); when given, plans use them and weights_gib must agree to 0.01 GiB.
    weights_bytes: PositiveInt | None = None
    params_billions: PositiveFloat | None = None
    architecture: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
    max_context: PositiveInt
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    quantization: Literal["fp8", "mxfp4", "awq", "gptq", "compressed-tensors", "bitsandbytes"] | None = None
    attention: _Attention
    kv_bytes_per_token: PositiveInt
    vllm_args: list[Annotated[str, Field(min_length=1)]] = []
    chat_template: Annotated[str, Field(pattern=r"^[\w.-]+\.jinja$")] | None = None
    load_format: Literal["hf", "mistral"] = "hf"
    tensor_parallel: bool = True
    multi_node: bool = False
    lora: bool = True  # False: LoRA adapters are refused (KAITO's DisallowLoRA)
    gated: bool = False
    notes: str | None = None
    # Each GPU must have at least this much total memory (GiB, as NVML reports it), whatever the
    # layout; min_gpu_memory_reason says which observed failure the floor comes from.
    min_gpu_memory_gib: PositiveFloat | None = None
    min_gpu_memory_reason: Annotated[str, Field(min_length=1)] | None = None
    # What vLLM's GPU memory budget uses beyond the KV geometry, from the repo's config.json
    # (text_config first); left out where unknown, and the planner assumes a stated default.
    vocab_size: PositiveInt | None = None
    hidden_size: PositiveInt | None = None
    tie_word_embeddings: bool = False
    num_experts: PositiveInt | None = None
    sliding_window: PositiveInt | None = None
    sliding_window_layers: Annotated[int, Field(ge=0)] = 0
    multimodal: bool = False

    @field_validator("revision", mode="before")
    @classmethod
    def _full_commit(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _HEX40.fullmatch(value):
            raise ValueError(
                "must be a full 40-character lower-case hex commit id, written as a quoted string"
            )
        return value


class _FamilyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    family: str
    presets: Annotated[list[_Preset], Field(min_length=1)]


# ------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe loader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    lambda loader, node: loader.construct_mapping(node, deep=True),
)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def _catalog_error(path: Path, preset: str | None, field_name: str | None, problem: str) -> CatalogError:
    where = []
    if preset:
        where.append(f"preset '{preset}'")
    if field_name:
        where.append(f"field '{field_name}'")
    subject = ", ".join(where)
    return CatalogError(
        f"Invalid preset catalog file {path}",
        why=f"{subject[:1].upper()}{subject[1:]}: {problem}" if where else problem[:1].upper() + problem[1:],
        fix=f"correct {subject} in {path}" if where else f"correct {path}",
        path=path,
        preset=preset,
        field=field_name,
    )


def _from_validation_error(path: Path, raw: Any, exc: ValidationError) -> CatalogError:
    errors = exc.errors()
    first = errors[0]
    loc = list(first["loc"])
    preset: str | None = None
    if len(loc) >= 2 and loc[0] == "presets" and isinstance(loc[1], int):
        index = loc[1]
        entry = raw["presets"][index]
        name = entry.get("name") if isinstance(entry, dict) else None
        preset = name if isinstance(name, str) else f"#{index + 1}"
        loc = loc[2:]
    field_name = ".".join(str(part) for part in loc) or None
    problem = first["msg"].removeprefix("Value error, ")
    if first["type"] not in ("missing", "extra_forbidden") and not isinstance(first["input"], dict):
        problem += f" (got {shortened(repr(first['input']), 200)})"
    if first["type"] == "extra_forbidden":
        schema = _FamilyFile if preset is None else _Attention if len(loc) > 1 else _Preset
        problem = f"unknown key (known keys: {', '.join(schema.model_fields)})"
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem(s) in this file)"
    return _catalog_error(path, preset, field_name, problem)


# ------------------------------------------------------------------------------------------------
# Consistency checks past the field types
# ------------------------------------------------------------------------------------------------


def _geometry(path: Path, entry: _Preset) -> AttentionGeometry:
    att = entry.attention
    mla = {"kv_lora_rank": att.kv_lora_rank, "qk_rope_head_dim": att.qk_rope_head_dim}
    std = {"num_kv_heads": att.num_kv_heads, "head_dim": att.head_dim}
    mla_set = [k for k, v in mla.items() if v is not None]
    std_set = [k for k, v in std.items() if v is not None]

    def fail(key: str, problem: str) -> CatalogError:
        return _catalog_error(path, entry.name, f"attention.{key}", problem)

    if mla_set and std_set:
        raise fail(
            mla_set[0],
            f"MLA fields ({', '.join(mla_set)}) mixed with standard-attention fields "
            f"({', '.join(std_set)}); give either kv_lora_rank + qk_rope_head_dim or "
            "num_kv_heads + head_dim",
        )
    wanted = mla if mla_set else std
    for key, value in wanted.items():
        if value is None:
            raise fail(key, "missing; " + " and ".join(wanted) + " go together")
    if att.num_kv_heads and att.num_attention_heads % att.num_kv_heads:
        raise fail(
            "num_kv_heads",
            f"{att.num_kv_heads} KV heads do not divide {att.num_attention_heads} attention heads",
        )
    geometry = AttentionGeometry(
        num_layers=att.num_layers,
        num_attention_heads=att.num_attention_heads,
        num_kv_heads=att.num_kv_heads,
        head_dim=att.head_dim,
        kv_lora_rank=att.kv_lora_rank,
        qk_rope_head_dim=att.qk_rope_head_dim,
    )
    computed = geometry.kv_bytes_per_token()
    if computed != entry.kv_bytes_per_token:
        if geometry.is_mla:
            formula = (
                f"{att.num_layers} layers x ({att.kv_lora_rank} + {att.qk_rope_head_dim}) x 2 bytes"
            )
        else:
            formula = (
                f"2 x {att.num_layers} layers x {att.num_kv_heads} KV heads x "
                f"{att.head_dim} head_dim x 2 bytes"
            )
        raise _catalog_error(
            path,
            entry.name,
            "kv_bytes_per_token",
            f"declared {entry.kv_bytes_per_token} but the attention geometry gives "
            f"{formula} = {computed}",
        )
    return geometry


def _check_args(path: Path, entry: _Preset) -> None:
    args = group(entry.vllm_args)
    for arg in args:
        reason = _RESERVED_FLAGS.get(f"--{arg.name}")
        if reason:
            spelled = f" (given as {arg.tokens[0]!r})" if arg.tokens[0] != f"--{arg.name}" else ""
            raise _catalog_error(path, entry.name, "vllm_args", f"--{arg.name}{spelled} is not allowed here: {reason}")
    arg_format = last_value(args, "load-format")
    if (arg_format == "mistral") != (entry.load_format == "mistral"):
        raise _catalog_error(
            path,
            entry.name,
            "load_format",
            f"load_format is '{entry.load_format}' but vllm_args pass --load-format "
            f"{arg_format or '(none)'}; the downloaded files must match the format vLLM loads",
        )


def _check_min_gpu_memory(path: Path, entry: _Preset) -> None:
    has_floor = entry.min_gpu_memory_gib is not None
    has_reason = entry.min_gpu_memory_reason is not None
    if has_floor != has_reason:
        given, missing = (
            ("min_gpu_memory_gib", "min_gpu_memory_reason") if has_floor else ("min_gpu_memory_reason", "min_gpu_memory_gib")
        )
        raise _catalog_error(
            path,
            entry.name,
            missing,
            f"missing; {given} needs {missing} too (a floor on GPU memory must say where it comes from)",
        )


def _check_sliding_window(path: Path, entry: _Preset) -> None:
    if entry.sliding_window_layers > entry.attention.num_layers:
        raise _catalog_error(
            path, entry.name, "sliding_window_layers",
            f"{entry.sliding_window_layers} is more than the {entry.attention.num_layers} layers",
        )
    if entry.sliding_window_layers and entry.sliding_window is None:
        raise _catalog_error(path, entry.name, "sliding_window", "missing; sliding_window_layers needs the window size")


def _weights_bytes(path: Path, entry: _Preset) -> int:
    if entry.weights_bytes is None:
        return round(entry.weights_gib * GiB)
    if abs(entry.weights_bytes / GiB - entry.weights_gib) > 0.01:
        raise _catalog_error(
            path, entry.name, "weights_bytes",
            f"{entry.weights_bytes} bytes are {entry.weights_bytes / GiB:.2f} GiB, but weights_gib says {entry.weights_gib}",
        )
    return entry.weights_bytes


def _to_spec(path: Path, family: str, entry: _Preset) -> ModelSpec:
    geometry = _geometry(path, entry)
    _check_args(path, entry)
    _check_min_gpu_memory(path, entry)
    _check_sliding_window(path, entry)
    return ModelSpec(
        name=entry.name,
        architecture=entry.architecture,
        weights_bytes=_weights_bytes(path, entry),
        max_context=entry.max_context,
        attention=geometry,
        dtype=entry.dtype,
        quantization=entry.quantization,
        family=family,
        repo_id=entry.repo_id,
        revision=entry.revision,
        params_billions=entry.params_billions,
        vllm_args=tuple(entry.vllm_args),
        chat_template=entry.chat_template,
        load_format=entry.load_format,
        tensor_parallel_allowed=entry.tensor_parallel,
        multi_node=entry.multi_node,
        lora_allowed=entry.lora,
        gated=entry.gated,
        notes=entry.notes,
        min_gpu_memory_bytes=round(entry.min_gpu_memory_gib * GiB) if entry.min_gpu_memory_gib else None,
        min_gpu_memory_reason=entry.min_gpu_memory_reason,
        vocab_size=entry.vocab_size,
        hidden_size=entry.hidden_size,
        tie_word_embeddings=entry.tie_word_embeddings,
        num_experts=entry.num_experts,
        sliding_window=entry.sliding_window,
        sliding_window_layers=entry.sliding_window_layers,
        multimodal=entry.multimodal,
    )


def _load_file(path: Path) -> list[ModelSpec]:
    try:
        raw = load_bounded(read_bounded_text(path), _Loader)
    except YamlBoundsError as exc:
        raise _catalog_error(path, None, None, str(exc)) from None
    except yaml.YAMLError as exc:
        raise _catalog_error(path, None, None, f"not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise _catalog_error(path, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise _catalog_error(path, None, None, f"cannot be read: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise _catalog_error(
            path, None, None, "the top level must be a mapping with 'family' and 'presets' keys"
        )
    try:
        parsed = _FamilyFile.model_validate(raw)
    except ValidationError as exc:
        raise _from_validation_error(path, raw, exc) from None
    if parsed.family != path.stem:
        raise _catalog_error(
            path,
            None,
            "family",
            f"'{parsed.family}' does not match the file name; it must be '{path.stem}'",
        )
    return [_to_spec(path, parsed.family, entry) for entry in parsed.presets]


# ------------------------------------------------------------------------------------------------
# The catalog
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalog:
    """All presets, sorted by family then name; lookups are case-insensitive."""

    presets: tuple[ModelSpec, ...]
    source: Path | None = None
    _by_name: dict[str, ModelSpec] = field(default_factory=dict, repr=False, compare=False)
    files: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)  # lower-case name -> its file
    user_dir: Path | None = None  # the --catalog-dir folder merged in, if any

    @classmethod
    def from_specs(
        cls,
        specs: list[ModelSpec] | tuple[ModelSpec, ...],
        source: Path | None = None,
        files: dict[str, Path] | None = None,
        user_dir: Path | None = None,
    ) -> Catalog:
        ordered = tuple(sorted(specs, key=lambda s: (s.family or "", s.name)))
        return cls(ordered, source, {s.name.lower(): s for s in ordered}, dict(files or {}), user_dir)

    def __len__(self) -> int:
        return len(self.presets)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.presets)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._by_name

    def names(self) -> list[str]:
        return [spec.name for spec in self.presets]

    def families(self) -> list[str]:
        return sorted({spec.family for spec in self.presets if spec.family})

    def get(self, name: str) -> ModelSpec:
        spec = self._by_name.get(name.strip().lower())
        if spec is not None:
            return spec
        suggestions = self.suggest(name)
        listed = ", ".join(suggestions)
        fix = (
            f"did you mean {listed}? Or use a Hugging Face id such as {HUB_ID_EXAMPLE}"
            if suggestions
            else f"use one of the {len(self.presets)} built-in presets (--list-presets), or a Hugging Face id such as {HUB_ID_EXAMPLE}"
        )
        where = f" ({self.source})" if self.source else ""
        if self.user_dir is not None:
            where = f" ({self.source} and the catalog folder {self.user_dir})"
        raise UnknownPresetError(
            f"Unknown preset '{name}'",
            why=f"No preset in the catalog{where} has that name, and it is not a Hugging Face id (org/name)",
            fix=fix,
        )

    def find_by_repo(self, repo_id: str) -> ModelSpec | None:
        """The preset serving this Hugging Face repo id (case-insensitive), if any."""
        wanted = repo_id.strip().lower()
        for spec in self.presets:
            if spec.repo_id and spec.repo_id.lower() == wanted:
                return spec
        return None

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Up to ``limit`` preset names close to ``name``, best first."""
        query = name.strip().lower()
        if not query:
            return []
        names = self.names()
        ranked: list[str] = []

        def add(candidates: list[str]) -> None:
            for candidate in candidates:
                if candidate not in ranked:
                    ranked.append(candidate)

        # A repo id, or its last part (KAITO main's served names, e.g. an "-it" suffix).
        add([
            s.name
            for s in self.presets
            if s.repo_id and query in (s.repo_id.lower(), s.repo_id.lower().rsplit("/", 1)[-1])
        ])
        if len(query) >= 3:
            add(sorted((n for n in names if n.startswith(query)), key=len))
            add(sorted((n for n in names if query.startswith(n)), key=len, reverse=True))
            add(sorted((n for n in names if query in n), key=len))
        add(difflib.get_close_matches(query, names, n=limit, cutoff=0.6))
        # Names sharing a word ("coder", "mini", "r1"), most alike first; then looser spellings.
        words = {w for w in re.split(r"[-_./ ]+", query) if len(w) >= 2 and not w.isdigit()}

        def likeness(n: str) -> float:
            return difflib.SequenceMatcher(None, query, n).ratio()

        add(sorted((n for n in names if words & set(re.split(r"[-_.]+", n))), key=likeness, reverse=True))
        add(difflib.get_close_matches(query, names, n=limit, cutoff=0.45))
        return ranked[:limit]


def _load(presets_dir: Path) -> Catalog:
    files = sorted(presets_dir.glob("*.yaml"))
    if not files:
        raise CatalogError(
            f"No preset catalog files in {presets_dir}",
            why="The folder is missing or holds no *.yaml family files",
            fix="point to the folder holding the presets/*.yaml files, or reinstall kaito-runtime",
        )
    seen: dict[str, Path] = {}
    specs: list[ModelSpec] = []
    for path in files:
        for spec in _load_file(path):
            key = spec.name.lower()
            if key in seen:
                raise _catalog_error(
                    path, spec.name, "name", f"preset name is also defined in {seen[key]}"
                )
            seen[key] = path
            specs.append(spec)
    return Catalog.from_specs(specs, presets_dir, seen)


@functools.lru_cache(maxsize=1)
def _load_default() -> Catalog:
    return _load(data.presets_dir())


def load_catalog(presets_dir: Path | None = None, *, user_dir: Path | None = None) -> Catalog:
    """Load and validate every ``*.yaml`` in ``presets_dir`` (not its subfolders).

    Without ``presets_dir`` the shipped catalog is loaded once and cached. ``user_dir`` (a
    platform team's --catalog-dir / KAITO_CATALOG_DIR) adds its ``*.yaml`` files, validated by the
    same schema; a name that is also a built-in preset is a CatalogError naming both files.
    Raises ``CatalogError`` for the first malformed or inconsistent entry.
    """
    base = _load_default() if presets_dir is None else _load(Path(presets_dir))
    if user_dir is None:
        return base
    return _merged(base, Path(user_dir).expanduser())


_EMPTY_DIRS_SAID: set[Path] = set()  # empty catalog folders already warned about (once per process)


def _merged(base: Catalog, user_dir: Path) -> Catalog:
    if not user_dir.is_dir():
        raise CatalogError(
            f"The catalog folder {user_dir} does not exist" if not user_dir.exists() else f"{user_dir} is not a folder",
            why="--catalog-dir / KAITO_CATALOG_DIR names a folder of preset catalog files (*.yaml)",
            fix="point it to a folder of family files written like presets/*.yaml (kaito-run --export-preset prints one), or unset it",
        )
    if not any(user_dir.glob("*.yaml")):
        # An empty folder (a ConfigMap not filled yet) adds no preset: the built-in ones still serve.
        if user_dir not in _EMPTY_DIRS_SAID:
            _EMPTY_DIRS_SAID.add(user_dir)
            log.warning("the catalog folder %s holds no *.yaml family files; only the built-in presets are known", user_dir)
        return base
    user = _load(user_dir)
    for spec in user:
        key = spec.name.lower()
        if key in base.files:
            raise _catalog_error(
                user.files[key], spec.name, "name",
                f"preset name is also a built-in preset, defined in {base.files[key]}; "
                "a catalog folder adds presets, it does not replace them (give this one another name)",
            )
    return Catalog.from_specs(
        [*base.presets, *user.presets], base.source, {**base.files, **user.files}, user_dir
    )


# ------------------------------------------------------------------------------------------------
# A generated preset as a catalog entry (--export-preset)
# ------------------------------------------------------------------------------------------------


def family_of(repo_id: str) -> str:
    """The family an exported preset is filed under: the repo's organisation, lower-cased."""
    return re.sub(r"[^a-z0-9._-]+", "-", repo_id.split("/", 1)[0].lower()).strip("-") or "hub"


def catalog_entry(spec: ModelSpec) -> dict[str, Any]:
    """``spec`` as one preset of a family file, every field the schema knows that the spec
    sets (defaults left out). Raises CatalogError when the spec cannot be a preset."""
    att = spec.attention
    attention: dict[str, Any] = {"num_layers": att.num_layers, "num_attention_heads": att.num_attention_heads}
    if att.is_mla:
        attention |= {"kv_lora_rank": att.kv_lora_rank, "qk_rope_head_dim": att.qk_rope_head_dim}
    else:
        attention |= {"num_kv_heads": att.num_kv_heads, "head_dim": att.head_dim}
    entry: dict[str, Any] = {
        "name": spec.name,
        "repo_id": spec.repo_id,
        "revision": spec.revision,
        "weights_gib": round(spec.weights_bytes / GiB, 2) or 0.01,
        "weights_bytes": spec.weights_bytes,
        "params_billions": spec.params_billions,
        "architecture": spec.architecture,
        "max_context": spec.max_context,
        "dtype": spec.dtype,
        "quantization": spec.quantization,
        "attention": attention,
        "kv_bytes_per_token": spec.kv_bytes_per_token,
        "vllm_args": list(spec.vllm_args),
        "chat_template": spec.chat_template,
        "load_format": spec.load_format,
        "tensor_parallel": spec.tensor_parallel_allowed,
        "multi_node": spec.multi_node,
        "lora": spec.lora_allowed,
        "gated": spec.gated,
        "notes": spec.notes,
        "min_gpu_memory_gib": round(spec.min_gpu_memory_bytes / GiB, 2) if spec.min_gpu_memory_bytes else None,
        "min_gpu_memory_reason": spec.min_gpu_memory_reason,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "num_experts": spec.num_experts,
        "sliding_window": spec.sliding_window,
        "sliding_window_layers": spec.sliding_window_layers,
        "multimodal": spec.multimodal,
    }
    defaults = {name: f.default for name, f in _Preset.model_fields.items() if not f.is_required()}
    return {k: v for k, v in entry.items() if v is not None and not (k in defaults and defaults[k] == v and k != "vllm_args")}


def export_yaml(spec: ModelSpec, *, origin: str) -> str:
    """``spec`` as a family file that --catalog-dir loads: checked against the schema and the
    consistency rules first, so what is printed always loads. ``origin`` heads the comment."""
    what = f"--export-preset {spec.repo_id or spec.name}"
    if not spec.repo_id or not spec.revision or not _HEX40.fullmatch(spec.revision):
        raise CatalogError(
            f"Cannot export {spec.name} as a preset",
            why="a catalog preset names a Hugging Face repo pinned to a commit; this model "
            + ("is a local folder" if spec.local_path else "has no resolved commit"),
            fix="export a Hugging Face id: kaito-run --preset ORG/NAME --export-preset",
        )
    family = spec.family or family_of(spec.repo_id)
    raw = {"family": family, "presets": [catalog_entry(spec)]}
    where = Path(f"<{what}>/{family}.yaml")
    try:
        parsed = _FamilyFile.model_validate(raw)
    except ValidationError as exc:
        raise _from_validation_error(where, raw, exc) from None
    for entry in parsed.presets:
        _to_spec(where, family, entry)
    body = yaml.safe_dump(raw, sort_keys=False, width=100, allow_unicode=True, default_flow_style=None)
    header = (
        f"# {origin}\n"
        f"# Save as {family}.yaml in a catalog folder (--catalog-dir / KAITO_CATALOG_DIR); the file name must be\n"
        "# the family. The revision is the commit resolved now: the preset keeps serving these files.\n"
    )
    return header + body
