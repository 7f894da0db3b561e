"""PID 1 of a test's own PID namespace, as a pod's first process is: it starts a server, runs
KAITO's startup probe the way kubelet does until it passes, then serves until told to stop.

    unshare --pid --fork --mount-proc python pid1_harness.py STOP_FILE PROBE -- SERVER_ARGV...

- The server's output goes to this process's stdout (a pod's log); the probe writes its
  KAITO_BENCHMARK_* lines through /proc/1/fd/1, which in this namespace is this process's
  stdout, never the test machine's init.
- Each probe run is reported as one line ``HARNESS probe <exit code> <seconds since start>``; the
  first exit 0 (or the deadline) ends probing with ``HARNESS probing-done``.
- When STOP_FILE appears, or the server exits by itself, it stops: ``HARNESS server-exit <code>``,
  and this process exits with the server's code. Leaving the namespace ends whatever is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PROBE_PERIOD = 2.0
PROBE_DEADLINE = 420.0


def say(text: str) -> None:
    sys.stdout.write(f"HARNESS {text}\n")
    sys.stdout.flush()


def main() -> int:
    stop_file, probe = sys.argv[1], sys.argv[2]
    server_argv = sys.argv[sys.argv.index("--") + 1 :]
    started = time.monotonic()
    server = subprocess.Popen(server_argv, stdout=sys.stdout, stderr=subprocess.STDOUT)
    say(f"server-pid {server.pid}")
    while time.monotonic() - started < PROBE_DEADLINE and server.poll() is None:
        code = subprocess.run([sys.executable, probe], stdout=sys.stdout, stderr=sys.stdout).returncode
        say(f"probe {code} {time.monotonic() - started:.1f}")
        if code == 0:
            break
        time.sleep(PROBE_PERIOD)
    say("probing-done")
    while server.poll() is None and not os.path.exists(stop_file):
        time.sleep(0.2)
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(120)
    except subprocess.TimeoutExpired:
        server.kill()
        code = server.wait()
    say(f"server-exit {code}")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
