"""The real parts of other steps that a step's tests borrow (tests/<step>/ import only their
own step, the leaves and tests.support: this module is where a test crosses into another step,
so every such crossing is listed here). Each name is imported on first use, from its home.
"""

from __future__ import annotations

import importlib

_HOMES = {
    'CONTEXT_ALIGN': ('kaito_runtime.plan.vllm_rules', 'CONTEXT_ALIGN'),
    'CPU_HEAD_DIMS': ('kaito_runtime.plan.vllm_rules', 'CPU_HEAD_DIMS'),
    'GroupRequest': ('kaito_runtime.request.settle', 'GroupRequest'),
    'MARKER_NAME': ('kaito_runtime.weights', 'MARKER_NAME'),
    'MAX_LORA_RANKS': ('kaito_runtime.launch.vllm_command', 'MAX_LORA_RANKS'),
    'MODE_ALIASES': ('kaito_runtime.cli', 'MODE_ALIASES'),
    'ModelRequest': ('kaito_runtime.request.settle', 'ModelRequest'),
    'RemoteFile': ('kaito_runtime.hub', 'RemoteFile'),
    'RuntimeRequest': ('kaito_runtime.request', 'RuntimeRequest'),
    'WeightsResult': ('kaito_runtime.weights', 'WeightsResult'),
    'api': ('kaito_runtime.api', ''),
    'container_memory': ('kaito_runtime.node.container_memory', 'container_memory'),
    'describe_inventory': ('kaito_runtime.render', 'describe_inventory'),
    'detect_vllm': ('kaito_runtime.launch.vllm_install', 'detect_vllm'),
    'ensure_store_weights': ('kaito_runtime.weights', 'ensure_store_weights'),
    'ensure_weights': ('kaito_runtime.weights', 'ensure_weights'),
    'fingerprint': ('kaito_runtime.launch.group.store', 'fingerprint'),
    'kv_bytes_per_token_per_gpu': ('kaito_runtime.plan.memory', 'kv_bytes_per_token_per_gpu'),
    'kv_dtype_bytes': ('kaito_runtime.plan.memory', 'kv_dtype_bytes'),
    'launch': ('kaito_runtime.launch', ''),
    'load_catalog': ('kaito_runtime.model.catalog', 'load_catalog'),
    'load_profile': ('kaito_runtime.node.vllm_memory', 'load_profile'),
    'lock_path': ('kaito_runtime.weights.store', 'lock_path'),
    'lora_tokens': ('kaito_runtime.launch.vllm_command', 'lora_tokens'),
    'main': ('kaito_runtime.cli', 'main'),
    'node_facts': ('kaito_runtime.launch.group', 'node_facts'),
    'objects': ('kaito_runtime.weights.objects', ''),
    'offline_in': ('kaito_runtime.request', 'offline_in'),
    'profile_from_table': ('kaito_runtime.node.vllm_memory', 'profile_from_table'),
    'remote_metadata': ('kaito_runtime.model.sources', 'remote_metadata'),
    'skus': ('kaito_runtime.node', 'skus'),
    'spec_from_folder': ('kaito_runtime.model.sources', 'spec_from_folder'),
    'spec_from_store': ('kaito_runtime.model.store', 'spec_from_store'),
    'streamer_tokens': ('kaito_runtime.launch.vllm_command', 'streamer_tokens'),
    'tp_rule_violation': ('kaito_runtime.plan.vllm_rules', 'tp_rule_violation'),
    'weights_bytes': ('kaito_runtime.model.sources', 'weights_bytes'),
}


def __getattr__(name: str):
    try:
        module, attr = _HOMES[name]
    except KeyError:
        raise AttributeError(name) from None
    found = importlib.import_module(module)
    return getattr(found, attr) if attr else found


__all__ = sorted(_HOMES)
