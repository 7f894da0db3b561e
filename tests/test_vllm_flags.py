from __future__ import annotations

import pytest

from kaito_runtime.vllm_flags import flag_names, group, last_int, last_value, normalise_flag


@pytest.mark.parametrize(
    "spelling",
    [["--max-model-len", "8"], ["--max_model_len", "8"], ["--max-model-len=8"], ["--Max-Model-Len", "8"], ["--MAX_MODEL_LEN=8"]],
)
def test_every_spelling_is_one_flag_with_its_value(spelling):
    args = group(spelling)
    assert [a.name for a in args] == ["max-model-len"]
    assert last_int(args, "max-model-len", 0) == 8


@pytest.mark.parametrize(("short", "name"), [("-tp", "tensor-parallel-size"), ("-pp", "pipeline-parallel-size"), ("-dp", "data-parallel-size")])
def test_short_forms_with_a_space_or_an_equals_sign(short, name):
    assert last_int(group([short, "4"]), name, 1) == 4
    assert last_int(group([f"{short}=4"]), name, 1) == 4
    assert normalise_flag(short) == name


def test_the_last_occurrence_wins_and_unknown_flags_keep_their_values():
    args = group(["--max-num-seqs", "64", "-tp", "2", "--tensor_parallel_size=8", "--enable-prefix-caching"])
    assert last_int(args, "tensor-parallel-size", 1) == 8
    assert last_value(args, "max-num-seqs") == "64"
    assert last_value(args, "enable-prefix-caching") is None
    assert flag_names(["--Served_Model_Name", "a", "b"]) == {"served-model-name"}
    assert group(["--served-model-name", "a", "b"])[0].values == ("a", "b")


def test_a_negative_number_is_a_value_not_a_flag():
    assert last_value(group(["--seed", "-1"]), "seed") == "-1"


@pytest.mark.parametrize("secret", [
    ["--hf-token", "hf_x"], ["--hf_token=hf_x"], ["--HF-Token", "hf_x"], ["--api_key=hf_x"], ["--api-key", "hf_x", "hf_y"],
])
def test_the_published_arguments_hold_no_secret_in_any_spelling(secret):
    from kaito_runtime.vllm_flags import parse_user_args

    parsed = parse_user_args({"hf_token": "hf_x", "max-model-len": 256}, ["--enforce-eager", *secret])
    assert not any("hf_" in token for token in parsed.published)
    assert parsed.published == ("--max-model-len", "256", "--enforce-eager")
    assert "hf-token" not in parsed.names


def test_the_users_flags_size_the_plan_options():
    from kaito_runtime.types import PlanOverrides
    from kaito_runtime.vllm_flags import parse_user_args

    asked = PlanOverrides(max_model_len=4096)
    assert parse_user_args(None, ("--served-model-name", "x")).sized(asked) is asked  # nothing to size
    user = parse_user_args({"max-num-seqs": 8}, ("-tp", "2", "--max-num-batched-tokens", "8k", "--enforce-eager"))
    assert user.sized(asked) == PlanOverrides(max_model_len=4096, tensor_parallel_size=2, max_num_seqs=8,
                                              max_num_batched_tokens=8000, enforce_eager=True)  # 8k: 8000, as vLLM reads it
    assert parse_user_args(None, ("--no-enforce-eager",)).sized(PlanOverrides(enforce_eager=True)).enforce_eager is False
