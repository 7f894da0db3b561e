"""kaito-runtime: turn a GPU node (or a CPU box) into a running vLLM endpoint."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kaito-runtime")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
