#!/usr/bin/env python3
"""KAITO's /workspace/vllm/multi-node-health-check.py, answered from HTTP health endpoints.

    multi-node-health-check.py liveness  --leader-address=ADDR [--ray-port=6379] [--vllm-port=5000]
    multi-node-health-check.py readiness --leader-address=ADDR [--vllm-port=5000]

- liveness: this pod's own /health on 127.0.0.1: vLLM's on the leader, the kaito-run launcher's on
  a worker (200 while its vLLM is alive and the leader's heartbeat is fresh). KAITO asks Ray for
  dead actors instead; there are none here.
- readiness: on the leader (POD_INDEX 0, or unset) the leader's /health at ADDR. On a worker
  (POD_INDEX > 0) it answers ready at once, as KAITO's script does, so that a rolling update of a
  StatefulSet never waits on a worker that waits on the leader.

Exit 0 = healthy, 1 = not; one line on stdout says what was asked and what came back. The port
is --vllm-port (default $KAITO_PORT, else 5000, KAITO's); --ray-port is accepted and not used. Standard library
only, so a probe costs one short interpreter start.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 5000
DEFAULT_TIMEOUT_S = 3.0
MAX_TIMEOUT_S = 300.0
# A number of seconds as kaito-run reads one: ASCII digits, finite (kaito_runtime.numbers; this
# script is standard library only, so the rule is written again here).
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def seconds(text: str) -> float:
    """A probe timeout: finite seconds above 0 and at most MAX_TIMEOUT_S; ValueError otherwise."""
    value = float(text) if _DECIMAL.fullmatch(text.strip()) else math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise ValueError(f"{text!r} is not a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}")
    return value


def _port_arg(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text.strip()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number 1-65535")
    return int(text)


def _timeout_arg(text: str) -> float:
    try:
        return seconds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def health(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only, our own URL
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code}"
    except (OSError, ValueError) as error:  # refused, timed out, no route, bad name
        reason = getattr(error, "reason", error)
        return False, f"no answer ({reason})"


def is_worker(env: dict[str, str]) -> bool:
    index = env.get("POD_INDEX", "").strip()
    return index.isdigit() and int(index) > 0


def check(probe: str, leader: str | None, port: int, timeout: float, env: dict[str, str]) -> tuple[int, str]:
    if probe == "readiness" and is_worker(env):
        return 0, f"readiness: worker (POD_INDEX={env['POD_INDEX']}): ready; the leader's readiness gates the group"
    if probe == "readiness":
        if not leader:
            return 1, "readiness: no --leader-address given"
        host = f"[{leader}]" if ":" in leader else leader
        url = f"http://{host}:{port}/health"
    else:
        url = f"http://127.0.0.1:{port}/health"
    ok, what = health(url, timeout)
    return (0 if ok else 1), f"{probe}: {url}: {what}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multi-node-health-check.py")
    parser.add_argument("probe", choices=("liveness", "readiness"))
    parser.add_argument("--leader-address", "--leader_address")
    # KAITO_PORT moves kaito-run's port (a pod beside others on the host network): the probe follows
    # it. A string default goes through _port_arg too, so a bad KAITO_PORT is refused in one line.
    parser.add_argument("--vllm-port", "--vllm_port", type=_port_arg, default=os.environ.get("KAITO_PORT") or str(DEFAULT_PORT))
    parser.add_argument("--ray-port", "--ray_port", type=_port_arg, help="accepted for KAITO's probe; not used")
    parser.add_argument("--timeout", type=_timeout_arg, default=None,
                        help=f"seconds to wait for an answer (default: KAITO_HEALTH_TIMEOUT, else {DEFAULT_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    if args.timeout is None:
        raw = os.environ.get("KAITO_HEALTH_TIMEOUT", "").strip()
        try:
            args.timeout = seconds(raw) if raw else DEFAULT_TIMEOUT_S
        except ValueError as error:
            parser.error(f"KAITO_HEALTH_TIMEOUT: {error}")
    code, line = check(args.probe, args.leader_address, args.vllm_port, args.timeout, dict(os.environ))
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
