"""vLLM command builder: argv shape, merge rule, warnings, environment."""

from __future__ import annotations

import os
import shlex

import pytest

from kaito_runtime.launch.cpu_ranks import CpuLayout
from tests.support.steps import load_catalog
from tests.support.planner_helpers import plan_launch
from kaito_runtime.types import GiB, AttentionGeometry, GpuInfo, HostInfo, ModelSpec, NodeInventory, PlanOverrides, Topology
from kaito_runtime.launch.vllm_command import (
    TOKEN_ENV_VARS,
    CommandInputs,
    build_vllm_command,
    display_argv,
    format_command,
    normalise_flag,
    parse_human_int,
)

CATALOG = load_catalog()


def node(count: int, total_gib: float = 80.0, free_gib: float | None = None) -> NodeInventory:
    total = int(total_gib * GiB)
    free = total if free_gib is None else int(free_gib * GiB)
    gpus = tuple(GpuInfo(i, "NVIDIA A100 80GB", f"GPU-{i}", total, free, (8, 0)) for i in range(count))
    return NodeInventory(gpus, HostInfo(96, 900 * GiB, 800 * GiB), source="sku")


def group(nnodes: int = 1, rank: int = 0) -> Topology:
    return Topology(nnodes=nnodes, node_rank=rank, leader_address="10.1.2.3" if nnodes > 1 else None, master_port=29555)


def tiny() -> ModelSpec:
    return ModelSpec(
        name="tiny",
        architecture="LlamaForCausalLM",
        weights_bytes=1_641_920,
        max_context=512,
        attention=AttentionGeometry(num_layers=2, num_attention_heads=4, num_kv_heads=2, head_dim=32),
    )


def cpu_plan():
    inv = NodeInventory((), HostInfo(2, 24 * GiB, 20 * GiB), source="none", no_gpu_reason="no NVML")
    return plan_launch(tiny(), inv, group())


def llama70b_plan(**overrides):
    return plan_launch(CATALOG.get("llama-3.3-70b-instruct"), node(4), group(), PlanOverrides(**overrides))


def flag_value(argv, flag):
    i = argv.index(flag)
    return argv[i + 1]


def test_gpu_argv_shape():
    launch = build_vllm_command(llama70b_plan(), CommandInputs(model_path="/w/llama", chat_template_dir=None))
    argv = launch.argv
    assert argv[:3] == ("vllm", "serve", "/w/llama")
    assert flag_value(argv, "--served-model-name") == "llama-3.3-70b-instruct"
    assert flag_value(argv, "--host") == "0.0.0.0" and flag_value(argv, "--port") == "5000"
    assert flag_value(argv, "--tensor-parallel-size") == "4"
    assert "--pipeline-parallel-size" not in argv
    assert flag_value(argv, "--gpu-memory-utilization") == "0.95"
    assert flag_value(argv, "--max-model-len") == "131072"
    assert flag_value(argv, "--tool-call-parser") == "llama3_json"
    assert "--enable-auto-tool-choice" in argv
    assert "--distributed-executor-backend" not in argv and "--enforce-eager" not in argv


def test_module_entrypoint_takes_model_as_flag():
    entry = ("python", "-m", "vllm.entrypoints.openai.api_server")
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", entrypoint=entry))
    assert launch.argv[:5] == (*entry, "--model", "/m")
    explicit = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", entrypoint=("vllm", "serve"), model_as_flag=True))
    assert explicit.argv[:4] == ("vllm", "serve", "--model", "/m")


def test_cpu_env_and_flags():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m"))
    assert launch.env["HF_HUB_OFFLINE"] == "1"
    assert launch.env["VLLM_NO_USAGE_STATS"] == "1"
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert launch.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert flag_value(launch.argv, "--distributed-executor-backend") == "uni"
    assert "--enforce-eager" in launch.argv
    assert "--gpu-memory-utilization" not in launch.argv
    assert flag_value(launch.argv, "--max-model-len") == "512"


def test_an_eager_cpu_launch_turns_torch_compile_off_for_vllms_helpers():
    # Eager vLLM still compiles its sampler and TP helpers at the first request that needs them;
    # TORCH_COMPILE_DISABLE makes that request as fast as the next one.
    assert build_vllm_command(cpu_plan(), CommandInputs(model_path="/m")).env["TORCH_COMPILE_DISABLE"] == "1"


@pytest.mark.parametrize(
    ("why", "extra_args", "base_env", "eager"),
    [
        ("the user turned eager off", ["--no-enforce-eager"], {}, False),
        ("PP on the CPU runs compiled: the plan's eager is dropped", ["--pipeline-parallel-size", "2"], {}, False),
        ("the user exported their own value", [], {"TORCH_COMPILE_DISABLE": "0"}, True),
    ],
)
def test_torch_compile_stays_on_when_the_cpu_launch_compiles_or_the_user_chose(why, extra_args, base_env, eager):
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=extra_args, base_env=base_env))
    assert launch.cpu_kv_cache_gib is not None  # still the CPU target
    assert ("--enforce-eager" in launch.argv) is eager, why
    assert "TORCH_COMPILE_DISABLE" not in launch.env, why


def test_a_gpu_launch_leaves_torch_compile_alone_even_eager():
    launch = build_vllm_command(llama70b_plan(), CommandInputs(model_path="/w", extra_args=["--enforce-eager"]))
    assert "--enforce-eager" in launch.argv
    assert "TORCH_COMPILE_DISABLE" not in launch.env


def test_user_exported_cpu_variables_win():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", base_env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in launch.env  # inherited from the parent instead
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_user_kv_cache_flag_wins_over_planned_cpu_kv_space():
    # VLLM_CPU_KVCACHE_SPACE overrides --kv-cache-memory-bytes on the CPU backend, so the planned
    # variable must go when the user passes the flag.
    planned = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m"))
    assert "VLLM_CPU_KVCACHE_SPACE" in planned.env
    user = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["--kv-cache-memory-bytes", "64k"]))
    assert "VLLM_CPU_KVCACHE_SPACE" not in user.env
    assert flag_value(user.argv, "--kv-cache-memory-bytes") == "64k"


def test_token_variables_are_unset_and_never_in_argv():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["--hf-token", "hf_secret123"]))
    assert set(TOKEN_ENV_VARS) == {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "KAITO_HF_TOKEN_FILE"}
    assert set(launch.unset_env) >= set(TOKEN_ENV_VARS)
    assert not any(k in launch.env for k in TOKEN_ENV_VARS)
    assert "hf_secret123" not in " ".join(launch.argv)
    assert any("--hf-token" in w for w in launch.warnings)


def test_merge_rule_user_values_win_once():
    launch = build_vllm_command(
        llama70b_plan(),
        CommandInputs(model_path="/w",
            config_args={"max_model_len": 16384, "enforce-eager": True, "cpu-offload-gb": 0, "enable-auto-tool-choice": False},
            extra_args=["-tp", "2", "--gpu-memory-utilization=0.9", "--tool-call-parser", "pythonic"]),
    )
    argv = launch.argv
    assert argv.count("--max-model-len") == 0 and flag_value(argv, "--max_model_len") == "16384"
    assert "--tensor-parallel-size" not in argv and flag_value(argv, "-tp") == "2"
    assert "--gpu-memory-utilization=0.9" in argv and "--gpu-memory-utilization" not in argv
    assert flag_value(argv, "--tool-call-parser") == "pythonic" and argv.count("--tool-call-parser") == 1
    assert "--enable-auto-tool-choice" not in argv  # switched off by the config file
    assert "--enforce-eager" in argv and flag_value(argv, "--cpu-offload-gb") == "0"
    # Config file first, then the arguments after --.
    assert argv.index("--max_model_len") < argv.index("-tp")
    assert launch.warnings == ("chat template tool-chat-llama3.1-json.jinja not found among kaito-runtime's own (no "
                               "--chat-template-dir given); the tokenizer's own chat template is used (to use the "
                               "preset's, put the file in --chat-template-dir, or pass '-- --chat-template FILE')",)


def test_extra_args_override_config_args():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", config_args={"max-model-len": 256}, extra_args=["--max-model-len", "128"]))
    assert launch.argv.count("--max-model-len") == 1 and flag_value(launch.argv, "--max-model-len") == "128"


def test_negative_number_is_a_value_not_a_flag():
    launch = build_vllm_command(llama70b_plan(), CommandInputs(model_path="/w", extra_args=["--max-model-len", "-1"]))
    assert flag_value(launch.argv, "--max-model-len") == "-1"
    assert launch.argv.count("--max-model-len") == 1


def test_unknown_flags_pass_through():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["--some-future-flag", "x", "--bare"]))
    assert launch.argv[-3:] == ("--some-future-flag", "x", "--bare")
    assert launch.warnings == ()


def test_warns_when_user_values_contradict_the_fit():
    plan = plan_launch(CATALOG.get("llama-3.1-8b-instruct"), node(1, 22.5, free_gib=20), group())
    launch = build_vllm_command(
        plan, CommandInputs(model_path="/w", chat_template_dir=None,
            extra_args=["--max-model-len", "128k", "--gpu-memory-utilization", "0.95", "--tensor-parallel-size", "3"]),
    )
    text = "\n".join(launch.warnings)
    assert "--max-model-len 128000 is more than the planner estimates fits" in text
    assert f"fits with --max-model-len <= {plan.context_limit}" in text and plan.context_limit % 256 == 0
    assert "--gpu-memory-utilization 0.95 needs 21.4 GiB per GPU but only 20.0 GiB of 22.5 GiB is free" in text
    assert "--tensor-parallel-size 3: tensor-parallel-size 3 does not divide the 32 attention heads" in text
    assert "TP 3 x PP 1 = 3 GPUs, but the group has 1" in text


def test_longer_than_model_context_warns():
    launch = build_vllm_command(llama70b_plan(), CommandInputs(model_path="/w", config_args={"max-model-len": 200000}))
    assert any("longer than llama-3.3-70b-instruct's context 131072" in w for w in launch.warnings)


def test_chat_template_used_only_when_file_exists(tmp_path):
    plan = llama70b_plan()
    missing = build_vllm_command(plan, CommandInputs(model_path="/w", chat_template_dir=str(tmp_path)))
    assert "--chat-template" not in missing.argv
    assert any("tokenizer's own chat template" in w for w in missing.warnings)
    (tmp_path / "tool-chat-llama3.1-json.jinja").write_text("{{ messages }}")
    present = build_vllm_command(plan, CommandInputs(model_path="/w", chat_template_dir=str(tmp_path)))
    assert flag_value(present.argv, "--chat-template") == str(tmp_path / "tool-chat-llama3.1-json.jinja")
    assert present.warnings == ()
    user = build_vllm_command(plan, CommandInputs(model_path="/w", chat_template_dir=str(tmp_path), extra_args=["--chat-template", "/mine.jinja"]))
    assert flag_value(user.argv, "--chat-template") == "/mine.jinja" and user.argv.count("--chat-template") == 1


def test_the_falcon_presets_get_the_shipped_template_unless_the_folder_has_kaitos(tmp_path):
    from kaito_runtime.settings import shipped_chat_templates_dir

    plan = plan_launch(CATALOG.get("falcon-7b-instruct"), node(1), group(), PlanOverrides())
    shipped = build_vllm_command(plan, CommandInputs(model_path="/w", chat_template_dir=str(tmp_path)))
    assert flag_value(shipped.argv, "--chat-template") == str(shipped_chat_templates_dir() / "falcon-instruct.jinja")
    assert shipped.warnings == ()
    (tmp_path / "falcon-instruct.jinja").write_text("{{ messages }}")  # KAITO's file, mounted
    kaitos = build_vllm_command(plan, CommandInputs(model_path="/w", chat_template_dir=str(tmp_path)))
    assert flag_value(kaitos.argv, "--chat-template") == str(tmp_path / "falcon-instruct.jinja")


def test_each_shipped_template_is_one_a_preset_names():
    """The shipped folder holds templates, and only ones that some preset names."""
    from kaito_runtime.settings import shipped_chat_templates_dir

    named = {spec.chat_template for spec in CATALOG.presets if spec.chat_template}
    shipped = {p.name for p in shipped_chat_templates_dir().glob("*.jinja")}
    assert shipped and shipped <= named, shipped - named


def test_model_without_template_gets_no_warning():
    assert build_vllm_command(cpu_plan(), CommandInputs(model_path="/m")).warnings == ()


@pytest.mark.parametrize("rank", [0, 1])
def test_multi_node_flags(rank):
    plan = plan_launch(CATALOG.get("llama-3.3-70b-instruct"), node(2), group(2, rank))
    launch = build_vllm_command(plan, CommandInputs(model_path="/w"))
    argv = launch.argv
    assert flag_value(argv, "--tensor-parallel-size") == "2"
    assert flag_value(argv, "--pipeline-parallel-size") == "2"
    assert flag_value(argv, "--distributed-executor-backend") == "mp"
    assert flag_value(argv, "--nnodes") == "2"
    assert flag_value(argv, "--node-rank") == str(rank)
    assert flag_value(argv, "--master-addr") == "10.1.2.3"
    assert flag_value(argv, "--master-port") == "29555"
    assert ("--headless" in argv) == (rank > 0)
    assert "VLLM_HOST_IP" not in launch.env  # kaito-run: rendezvous.RendezvousInfo.child_env sets it


def test_replicas_get_data_parallel_flag():
    plan = plan_launch(CATALOG.get("phi-3-mini-4k-instruct"), node(4), group())
    assert flag_value(build_vllm_command(plan, CommandInputs(model_path="/w")).argv, "--data-parallel-size") == "4"


def test_auto_max_model_len_and_fallback_for_old_vllm():
    plan = plan_launch(CATALOG.get("llama-3.1-8b-instruct"), node(1, 22.5), group())
    assert plan.max_model_len_auto
    assert flag_value(build_vllm_command(plan, CommandInputs(model_path="/w")).argv, "--max-model-len") == "auto"
    old = build_vllm_command(plan, CommandInputs(model_path="/w", max_model_len_auto_supported=False))
    value = int(flag_value(old.argv, "--max-model-len"))
    assert value % 256 == 0 and value <= plan.kv_cache_tokens
    assert any("no '--max-model-len auto'" in w for w in old.warnings)


def test_model_vllm_args_with_underscore_form_are_overridden():
    spec = CATALOG.get("ministral-3-3b-instruct")
    plan = plan_launch(spec, node(1), group())
    launch = build_vllm_command(plan, CommandInputs(model_path="/w", extra_args=["--tokenizer-mode", "auto"]))
    modes = [t for t in launch.argv if normalise_flag(t) == "tokenizer-mode" and t.startswith("--")]
    assert modes == ["--tokenizer-mode"] and flag_value(launch.argv, "--tokenizer-mode") == "auto"


def test_normalise_and_units():
    assert normalise_flag("--max_model_len=8") == "max-model-len"
    assert normalise_flag("-tp") == "tensor-parallel-size"
    assert normalise_flag("-pp") == "pipeline-parallel-size"
    assert parse_human_int("32k") == 32000
    assert parse_human_int("32K") == 32768
    assert parse_human_int("auto") is None


def test_format_command_is_a_runnable_shell_line():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/models/my model"))
    line = format_command(launch)
    assert line.startswith("env -u HF_TOKEN -u HUGGING_FACE_HUB_TOKEN -u HF_TOKEN_PATH ")
    words = shlex.split(line)
    assert "HF_HUB_OFFLINE=1" in words
    assert "/models/my model" in words


# ------------------------------------------------------------------------------------------------
# Effective host / port / served names (what readiness must poll)
# ------------------------------------------------------------------------------------------------


def test_effective_endpoint_is_the_plan_without_overrides():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", host="127.0.0.1", port=5000))
    assert (launch.host, launch.port, launch.served_model_names) == ("127.0.0.1", 5000, ("tiny",))
    assert launch.served_model_name == "tiny"


def test_pass_through_port_host_and_names_are_the_effective_values():
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m",
            extra_args=["--port=8001", "--host", "::1", "--served-model-name", "foo", "bar", "--max-num-seqs", "2"]),
    )
    assert (launch.host, launch.port, launch.served_model_names) == ("::1", 8001, ("foo", "bar"))
    assert launch.argv.count("--served-model-name") == 1 and "--port" not in launch.argv


def test_config_file_port_and_name_list_are_the_effective_values():
    # P/D decode pods move vLLM to 5001 through the KAITO config file (cluster-conventions.md)
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m", config_args={"port": 5001, "served_model_name": ["a", "b"]}),
    )
    assert (launch.port, launch.served_model_names) == (5001, ("a", "b"))
    # the pass-through wins over the config file
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", config_args={"port": 5001}, extra_args=["--port", "5002"]))
    assert launch.port == 5002 and launch.argv.count("--port") == 1


def test_equals_form_name_takes_one_value_and_a_bad_port_warns():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["--served-model-name=one", "--port", "http"]))
    assert launch.served_model_names == ("one",)
    assert launch.port == 5000  # unchanged, and said so
    assert any("--port 'http' is not a number" in w for w in launch.warnings)


def test_config_mapping_reaches_argv_as_json():
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m",
            config_args={"compilation-config": {"level": 3, "sizes": [1, 2]}, "some-list": [1, True], "flag": True}),
    )
    assert flag_value(launch.argv, "--compilation-config") == '{"level":3,"sizes":[1,2]}'
    i = launch.argv.index("--some-list")
    assert launch.argv[i + 1 : i + 3] == ("1", "true")
    assert launch.argv[i + 3] == "--flag"


# ------------------------------------------------------------------------------------------------
# CPU target with more than one rank (vllm-cpu.md "Parallel settings that worked")
# ------------------------------------------------------------------------------------------------


def test_cpu_tp2_from_config_drops_single_process_settings_and_binds_per_rank():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", config_args={"tensor-parallel-size": 2}, cpu_ids=[0, 1]))
    assert "uni" not in launch.argv and "--distributed-executor-backend" not in launch.argv
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in launch.env
    assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert flag_value(launch.argv, "--tensor-parallel-size") == "2"
    assert "--enforce-eager" in launch.argv  # TP works eager
    kv, layout = launch.warnings
    assert "TP 2 x PP 1 = 2 ranks" in layout and "2 CPU cores" in layout and "plan was for one process" in layout
    assert "--distributed-executor-backend uni" in layout and "VLLM_ENABLE_V1_MULTIPROCESSING=0" in layout
    # the plan's 1 GiB cannot be split below vLLM's 1 GiB unit: said, with the extra RAM
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "2 x 1 = 2 GiB" in kv and "1 GiB more than planned" in kv and "not after --" in kv


def test_cpu_pp2_drops_the_planned_enforce_eager():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["-pp", "2"], cpu_ids=range(8)))
    assert "--enforce-eager" not in launch.argv
    assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"
    assert any("--enforce-eager (PP on CPU needs compiled mode)" in w for w in launch.warnings)


def test_cpu_pp2_with_the_users_enforce_eager_keeps_it_and_warns():
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m", extra_args=["--pipeline-parallel-size", "2", "--enforce-eager"], cpu_ids=[0, 1]),
    )
    assert "--enforce-eager" in launch.argv
    assert any("needs compiled mode" in w and "PP 2" in w for w in launch.warnings)


def test_cpu_users_uni_backend_with_tp2_is_kept_and_warned_about():
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m", extra_args=["-tp", "2", "--distributed-executor-backend", "uni"], cpu_ids=[0, 1]),
    )
    assert flag_value(launch.argv, "--distributed-executor-backend") == "uni"
    assert any("cannot run TP 2 x PP 1" in w for w in launch.warnings)


def test_cpu_multi_rank_keeps_an_exported_bind():
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m", extra_args=["-tp", "2"], base_env={"VLLM_CPU_OMP_THREADS_BIND": "2|3"}, cpu_ids=[0, 1]),
    )
    assert "VLLM_CPU_OMP_THREADS_BIND" not in launch.env  # inherited
    assert any("keeping the exported VLLM_CPU_OMP_THREADS_BIND=2|3" in w for w in launch.warnings)


def test_cpu_more_ranks_than_cores_share_them_with_a_warning():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["-tp", "2", "-pp", "2"], cpu_ids=[0, 1]))
    assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1|0|1"
    assert any("4 CPU ranks share 2 core(s)" in w for w in launch.warnings)


def test_cpu_tp1_from_the_user_changes_nothing():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["-tp", "1"]))
    assert launch.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert flag_value(launch.argv, "--distributed-executor-backend") == "uni"
    assert launch.warnings == ()


def big_cpu_plan(**overrides):
    """llama-3.1-8b on a 500 GiB CPU box: 64 GiB of KV for one process (4 x 131072 tokens)."""
    inv = NodeInventory((), HostInfo(8, 600 * GiB, 500 * GiB), source="none", no_gpu_reason="no NVML")
    return plan_launch(CATALOG.get("llama-3.1-8b-instruct"), inv, group(), PlanOverrides(**overrides))


def test_cpu_pass_through_ranks_share_the_planned_kv_space():
    plan = big_cpu_plan()
    assert plan.cpu_kv_cache_gib == 64 and plan.world_size == 1
    launch = build_vllm_command(plan, CommandInputs(model_path="/m", extra_args=["-tp", "2"], cpu_ids=range(8), chat_template_dir=None))
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == "32"  # per rank: vLLM allocates it in each
    kv = next(w for w in launch.warnings if "VLLM_CPU_KVCACHE_SPACE=32 GiB per rank" in w)
    assert "the plan's 64 GiB of KV for 1 rank(s)" in kv and "2 x 32 = 64 GiB" in kv
    assert "~3.3 GiB of RAM the plan did not check" in kv


def test_cpu_planned_ranks_need_no_relayout_warning():
    plan = big_cpu_plan(tensor_parallel_size=2)
    launch = build_vllm_command(plan, CommandInputs(model_path="/m", cpu_ids=range(8), chat_template_dir=None))
    assert flag_value(launch.argv, "--tensor-parallel-size") == "2"
    assert "--distributed-executor-backend" not in launch.argv
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in launch.env
    assert launch.env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == str(plan.cpu_kv_cache_gib)  # already per rank
    assert not any("plan was for" in w or "VLLM_CPU_KVCACHE_SPACE" in w for w in launch.warnings)


def test_cpu_fewer_ranks_than_planned_get_the_whole_kv_space():
    plan = big_cpu_plan(tensor_parallel_size=2)
    launch = build_vllm_command(plan, CommandInputs(model_path="/m", extra_args=["-tp", "1"], chat_template_dir=None))
    assert launch.env["VLLM_CPU_KVCACHE_SPACE"] == str(2 * plan.cpu_kv_cache_gib)
    assert launch.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert any(f"the plan's {2 * plan.cpu_kv_cache_gib} GiB of KV for 2 rank(s)" in w for w in launch.warnings)


def test_cpu_users_kv_choice_is_not_shared_out():
    plan = big_cpu_plan()
    exported = build_vllm_command(
        plan, CommandInputs(model_path="/m", extra_args=["-tp", "2"], base_env={"VLLM_CPU_KVCACHE_SPACE": "10"}, cpu_ids=[0, 1],
            chat_template_dir=None),
    )
    assert "VLLM_CPU_KVCACHE_SPACE" not in exported.env  # inherited as the user set it
    assert not any("VLLM_CPU_KVCACHE_SPACE=" in w for w in exported.warnings)
    assert any("binding one core list per rank" in w for w in exported.warnings)


def test_cpu_pass_through_tp_breaking_the_head_rule_is_warned():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["-tp", "3"], cpu_ids=[0, 1, 2]))
    assert any("--tensor-parallel-size 3: tensor-parallel-size 3 does not divide the 4 attention heads" in w
               for w in launch.warnings)


def test_config_keys_with_dashes_are_the_same_flag():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", config_args={"--max-model-len": 128, "--enforce-eager": False}))
    assert flag_value(launch.argv, "--max-model-len") == "128" and launch.argv.count("--max-model-len") == 1
    assert "--enforce-eager" not in launch.argv and "----max-model-len" not in launch.argv


# ------------------------------------------------------------------------------------------------
# Effective parallel sizes, utilization, context (failure hints) and API key (readiness)
# ------------------------------------------------------------------------------------------------


def test_effective_sizes_are_the_plan_without_overrides():
    plan = llama70b_plan()
    launch = build_vllm_command(plan, CommandInputs(model_path="/w"))
    assert (launch.tensor_parallel_size, launch.pipeline_parallel_size, launch.data_parallel_size) == (4, 1, 1)
    assert launch.gpu_memory_utilization == plan.gpu_memory_utilization == 0.95
    assert launch.max_model_len == 131072
    assert launch.api_key is None
    cpu = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m"))
    assert cpu.gpu_memory_utilization is None and cpu.max_model_len == 512


def test_effective_sizes_follow_config_and_pass_through():
    launch = build_vllm_command(
        llama70b_plan(), CommandInputs(model_path="/w",
            config_args={"gpu_memory_utilization": 0.6, "pipeline-parallel-size": 2},
            extra_args=["-tp", "2", "--max-model-len=32k", "--data-parallel-size", "2"]),
    )
    assert (launch.tensor_parallel_size, launch.pipeline_parallel_size, launch.data_parallel_size) == (2, 2, 2)
    assert launch.gpu_memory_utilization == 0.6
    assert launch.max_model_len == 32000


def test_auto_context_is_none_and_a_bad_utilization_keeps_the_plan():
    plan = plan_launch(CATALOG.get("llama-3.1-8b-instruct"), node(1, 22.5), group())
    launch = build_vllm_command(plan, CommandInputs(model_path="/w", extra_args=["--gpu-memory-utilization", "lots"]))
    assert launch.max_model_len is None  # "auto"
    assert launch.gpu_memory_utilization == plan.gpu_memory_utilization


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        (["--api-key", "sk-flag"], {}, "sk-flag"),
        (["--api-key=sk-eq"], {"VLLM_API_KEY": "sk-env"}, "sk-eq"),  # the flag wins, as in vLLM
        ([], {"VLLM_API_KEY": "sk-env"}, "sk-env"),
        ([], {"VLLM_API_KEY": ""}, None),
    ],
)
def test_api_key_from_the_flag_or_the_environment(extra, env, expected):
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=extra, base_env=env))
    assert launch.api_key == expected
    if expected:
        assert expected not in repr(launch)


def test_api_key_from_the_config_file():
    launch = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", config_args={"api-key": "sk-config"}))
    assert launch.api_key == "sk-config"


def test_format_command_masks_the_api_key():
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m", config_args={"api-key": "sk-one"}, extra_args=["--max-num-seqs", "2"]),
    )
    line = format_command(launch)
    assert "sk-one" not in line and "VLLM_API_KEY='***'" in line and line.endswith("--max-num-seqs 2")
    assert "sk-one" not in launch.argv and "--api-key" not in launch.argv  # ps shows argv: not there
    assert launch.env["VLLM_API_KEY"] == "sk-one" and launch.api_key == "sk-one"  # vLLM reads it here
    assert "sk-one" not in repr(launch)
    eq = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["--api-key=sk-two"]))
    assert not any("sk-two" in t for t in eq.argv) and eq.env["VLLM_API_KEY"] == "sk-two"
    # several keys cannot travel in one variable: they stay on the argv (masked when shown), with a warning
    many = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m", extra_args=["--api-key=sk-two", "--api_key", "k1", "k2"]))
    shown = display_argv(many)
    assert many.argv[-3:] == ("--api_key", "k1", "k2") and "VLLM_API_KEY" not in many.env
    assert not {"sk-two", "k1", "k2"} & set(shown) and shown[-3:] == ("--api_key", "***", "***")
    assert any("2 --api-key values stay on vLLM's command line" in w for w in many.warnings)
    assert many.api_key == "k1"


# --- the CPU KV space vLLM really gets ------------------------------------------------------------


def test_cpu_kv_is_per_rank_and_recorded_with_its_source():
    plan = cpu_plan()
    one = build_vllm_command(plan, CommandInputs(model_path="/m"))
    assert one.cpu_kv_cache_gib == float(plan.cpu_kv_cache_gib) and one.cpu_ranks == 1
    assert one.sources["cpu-kv-cache"] == "plan"
    two = build_vllm_command(plan, CommandInputs(model_path="/m", extra_args=["-tp", "2"], cpu_ids=[0, 1]))
    assert two.cpu_ranks == 2
    assert two.cpu_kv_cache_gib == float(two.env["VLLM_CPU_KVCACHE_SPACE"])  # what each rank allocates


def test_an_exported_cpu_kv_space_too_big_for_the_ram_is_warned_with_numbers():
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m", base_env={"VLLM_CPU_KVCACHE_SPACE": "40"}, ram_available_bytes=23 * GiB),
    )
    assert launch.cpu_kv_cache_gib == 40.0 and launch.sources["cpu-kv-cache"] == "environment"
    assert "VLLM_CPU_KVCACHE_SPACE" not in launch.env  # the exported value is inherited
    warning = next(w for w in launch.warnings if "KV cache you set" in w)
    assert "40" in warning and "23" in warning and "RAM available" in warning


def test_a_kv_cache_memory_bytes_flag_too_big_for_the_ram_is_warned():
    launch = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m", extra_args=["--kv-cache-memory-bytes", "100G"], ram_available_bytes=23 * GiB),
    )
    assert launch.cpu_kv_cache_gib == 100.0 and launch.sources["cpu-kv-cache"] == "pass-through"
    assert "VLLM_CPU_KVCACHE_SPACE" not in launch.env  # it would override the flag
    assert any("KV cache you set (100" in w for w in launch.warnings)
    small = build_vllm_command(
        cpu_plan(), CommandInputs(model_path="/m", extra_args=["--kv-cache-memory-bytes", "1G"], ram_available_bytes=23 * GiB),
    )
    assert not any("KV cache you set" in w for w in small.warnings)


def test_the_merge_records_which_layer_set_each_flag():
    launch = build_vllm_command(
        llama70b_plan(), CommandInputs(model_path="/m", config_args={"max-model-len": 4096, "enforce-eager": False},
            extra_args=["-tp", "4"]),
    )
    assert launch.sources["max-model-len"] == "--config"
    assert launch.sources["tensor-parallel-size"] == "pass-through"
    assert launch.sources["port"] == "plan"
    assert launch.sources["enforce-eager"] == "--config"  # switched off there


def test_cpu_runs_put_the_amx_permission_shim_first_on_vllms_python_path(monkeypatch):
    """vLLM's CPU attention uses AMX without asking Linux: without the shim the engine dies on SIGILL."""
    from kaito_runtime.launch import vllm_command

    monkeypatch.setattr(vllm_command.platform, "machine", lambda: "x86_64")
    env, _ = vllm_command._env({"PYTHONPATH": "/user/lib"}, set(), CpuLayout(ranks=1, single_process=True, threads_bind='auto', kv_cache_gib=1), eager=True)
    first, rest = env["PYTHONPATH"].split(os.pathsep, 1)
    assert first == str(vllm_command.AMX_SITE_DIR) and rest == "/user/lib"
    assert (vllm_command.AMX_SITE_DIR / "sitecustomize.py").is_file()
    monkeypatch.setattr(vllm_command.platform, "machine", lambda: "aarch64")
    assert "PYTHONPATH" not in vllm_command._env({}, set(), CpuLayout(ranks=1, single_process=True, threads_bind='auto', kv_cache_gib=1), eager=True)[0]


def test_a_config_value_the_pass_through_overrides_is_not_warned_about():
    # vLLM never sees the config file's --max-model-len 200000 or TP 3 here: the pass-through's
    # values replace them, so only those are checked against the plan.
    launch = build_vllm_command(
        llama70b_plan(),
        CommandInputs(
            model_path="/w",
            config_args={"max-model-len": 200000, "tensor-parallel-size": 3},
            extra_args=["--max-model-len", "8192", "-tp", "4"],
        ),
    )
    assert launch.max_model_len == 8192 and launch.tensor_parallel_size == 4
    assert not any("200000" in w or "tensor-parallel-size 3" in w for w in launch.warnings), launch.warnings
    # the value that stands is still checked
    kept = build_vllm_command(
        llama70b_plan(), CommandInputs(model_path="/w", config_args={"max-model-len": 8192}, extra_args=["-tp", "3"])
    )
    assert any("tensor-parallel-size 3" in w for w in kept.warnings), kept.warnings


def test_vllm_never_inherits_the_group_secret_or_its_file():
    from kaito_runtime.launch import child_environment

    built = build_vllm_command(cpu_plan(), CommandInputs(model_path="/m"))
    env = {"KAITO_GROUP_SECRET": "group-secret-0123456789", "KAITO_GROUP_SECRET_FILE": "/run/group/secret", "PATH": "/bin"}
    child = child_environment(built, env, {"MASTER_ADDR": "10.0.0.1"})
    assert "KAITO_GROUP_SECRET" not in child and "KAITO_GROUP_SECRET_FILE" not in child
    assert "group-secret" not in repr(sorted(child.items())) and child["PATH"] == "/bin"
