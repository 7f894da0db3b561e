"""Build the tiny Llama-architecture test model in models/tiny-llama/ (offline, deterministic).

Random weights from a fixed seed and a byte-level BPE tokenizer trained on Python standard-library
sources, so nothing is downloaded and the result is the same on every run with the same Python,
torch, transformers and tokenizers versions. The figures below are chosen for vLLM's CPU backend:
its attention kernels need head_dim >= 32 (hidden 128 / 4 heads = 32).

Run with the project venv: .venv/bin/python scripts/make_tiny_model.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import sysconfig
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "models" / "tiny-llama"

VOCAB = 2048
MAX_LEN = 512
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, in this order
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(4)

# Long-lived standard-library modules present in every supported Python (3.10+); the first
# 40 that exist are the training text. "name" is tried as name.py, then name/__init__.py.
CORPUS_MODULES = (
    "abc argparse ast base64 bisect calendar cmd codecs collections colorsys contextlib copy csv "
    "dataclasses datetime difflib dis enum fnmatch fractions functools getopt gettext glob gzip "
    "heapq hmac inspect ipaddress json keyword linecache locale logging operator optparse os "
    "pprint queue random shlex shutil socket statistics string subprocess tempfile textwrap "
    "threading tokenize traceback typing uuid warnings"
).split()
CORPUS_FILES = 40

# bos, then per message "<|role|>" newline content eos; a generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

README = """\
# tiny-llama: a test model with random weights

Made by `scripts/make_tiny_model.py` (offline, a few seconds, deterministic). It exists so tests and
benchmarks can start real vLLM on a CPU without downloading anything. Its output is meaningless text.

- `LlamaForCausalLM`: hidden 128, intermediate 256, 2 layers, 4 attention heads, 2 KV heads
  (head_dim 32, the smallest vLLM's CPU attention accepts), vocab 2048, max_position_embeddings 512,
  untied embeddings, bfloat16, {params:,} parameters, random weights from torch seed 0.
- Tokenizer: byte-level BPE (vocab 2048) trained with the `tokenizers` library on {files} Python
  standard-library source files; special tokens `<unk> <s> </s> <pad>`; `<s>` is prepended to every
  encoding; model_max_length 512.
- Chat template (`chat_template.jinja`): `<s>`, then per message `<|role|>`, a newline, the content
  and `</s>`; `<|assistant|>` and a newline when a generation prompt is asked for.

Serve it on a CPU:

    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=auto HF_HUB_OFFLINE=1 \\
    VLLM_ENABLE_V1_MULTIPROCESSING=0 vllm serve models/tiny-llama --served-model-name tiny \\
        --max-model-len 256 --enforce-eager --distributed-executor-backend uni

Rebuild: `.venv/bin/python scripts/make_tiny_model.py`.
"""


def corpus_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for name in CORPUS_MODULES:
        for candidate in (stdlib / f"{name}.py", stdlib / name / "__init__.py"):
            if candidate.is_file():
                found.append(candidate)
                break
        if len(found) == CORPUS_FILES:
            break
    if len(found) < CORPUS_FILES:
        sys.exit(f"only {len(found)} of {CORPUS_FILES} standard-library files found under {stdlib}")
    return found


def train_tokenizer(files: list[Path]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((f.read_text(encoding="utf-8") for f in files), trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(token) == token_id, token
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B",
        special_tokens=[("<s>", BOS_ID)],
    )
    return tok


def build_model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()

    files = corpus_files()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(files),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_LEN,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    # Name the class every transformers release knows (5.x writes its new alias
    # "TokenizersBackend", which 4.x cannot load), and keep the template as its own file.
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config.pop("backend", None)
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    model = build_model()
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    (out / "README.md").write_text(README.format(params=params, files=len(files)))

    for path in sorted(out.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(f"{path.name:28} {path.stat().st_size:>10,} B  sha256 {digest}")


if __name__ == "__main__":
    main()
