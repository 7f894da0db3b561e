"""`kaito-run` as a real process whose installed vLLM is tests/support/fake_vllm.py.

    python tests/support/fake_vllm_run.py [kaito-run arguments]

Everything else is the real launcher: options, plan, weights, supervisor, signals, the
launcher's own HTTP and the termination message.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from kaito_runtime.launch import vllm_install  # noqa: E402

# vLLM's own pace at start (measured on vLLM 0.32's CPU build, scaled down): what the hand-over
# tests see unless they set their own
for name, seconds in (("FAKE_VLLM_IMPORT_S", "0.3"), ("FAKE_VLLM_BIND_S", "0.005"), ("FAKE_VLLM_ENGINE_S", "0.5")):
    os.environ.setdefault(name, seconds)

FAKE = vllm_install.VllmInstall(
    version="0.32.0",
    cpu_build=True,
    entrypoint=(sys.executable, str(Path(__file__).with_name("fake_vllm.py")), "serve"),
    model_as_flag=False,
)
vllm_install.detect_vllm = lambda *args, **kwargs: FAKE

if __name__ == "__main__":
    from kaito_runtime.cli import main

    main(sys.argv[1:], prog_name="kaito-run")
