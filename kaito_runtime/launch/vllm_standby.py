"""vLLM started ahead of need, for a group's next round: run by path as

    python .../vllm_standby.py [--preload MODULE]... -- PROGRAM ARG...

with exactly the environment the next vLLM would get. PROGRAM is the Python script the launcher
would start (the ``vllm`` console script, or launch/vllm_cli.py); ARG... its arguments.

It imports the ``--preload`` modules (torch, vLLM and its server: the slowest part of a start on a
busy node), then waits for one line on stdin. ``go`` runs PROGRAM as its own ``__main__`` with
``sys.argv = [PROGRAM, ARG...]``, as Python would run the script; its imports are found loaded.
Anything else (end of input: the launcher ended, or needs no standby) exits 0, having started
nothing. A preload that fails is left to the real start to report in its own words.

Run by path, not as ``-m kaito_runtime...``: vLLM's process imports nothing of the launcher, and
a process that multiprocessing's spawn starts from this main module runs none of it (the guard
below); once PROGRAM runs, spawn starts its children from PROGRAM, as without a standby.
"""

import sys


def main(argv: list[str]) -> int:
    import importlib
    import os
    import runpy

    preload: list[str] = []
    while argv and argv[0] == "--preload" and len(argv) > 1:
        preload.append(argv[1])
        argv = argv[2:]
    if len(argv) < 2 or argv[0] != "--":
        print("usage: vllm_standby.py [--preload MODULE]... -- PROGRAM ARG...", file=sys.stderr)
        return 2
    program = argv[1:]
    # As if Python ran PROGRAM: its folder first on the path, not this one (the launcher's).
    sys.path[0] = os.path.dirname(os.path.abspath(program[0]))
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # the real start reports it
            pass
    if sys.stdin.readline().strip() != "go":
        return 0
    null = os.open(os.devnull, os.O_RDONLY)  # as a fresh start: nothing to read on stdin
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, closefd=False)
    sys.argv = program
    try:
        runpy.run_path(program[0], run_name="__main__")
    except SystemExit as done:
        code = done.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
