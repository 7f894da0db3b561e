"""Start-to-ready of one model streamed from S3 vs. downloaded from the hub and then loaded, on the
CPU, in one run: the same bytes behind the same throttle.

The model is the tiny Llama with its vocabulary widened (``--vocab``) so that the weights are
big enough for the transfer to matter (random bf16 tensors; same config, tokenizer and names).
It is served by

  hub: `kaito-run --model bench/wide` against the hub emulator (HF_ENDPOINT), a fresh weights
       folder each run: the weights step downloads and verifies, then vLLM loads the folder;
  s3:  `kaito-run --model s3://models/wide` against a moto server (AWS_ENDPOINT_URL): the
       launcher reads the headers, vLLM streams the tensors (--load-format runai_streamer).

Both servers sit behind the same kind of throttling TCP proxy (``--mbps`` megabytes per second
from the server, shared by all its connections), so the link is the same. The clock starts when kaito-run is spawned
and stops when GET /health, /v1/models and a 1-token completion all succeed (bench_ready's check).
Runs alternate (hub, s3, hub, s3, ...).

    flock /work/tools/heavy.lock .venv/bin/python benchmarks/bench_object_store.py [--reps 2] [--mbps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_ready import REPO, _exit_on_sigterm, kaito_run_bin, measure

sys.path.insert(0, str(REPO))
from kaito_runtime.launch.supervisor import ReadinessCheck  # noqa: E402
from tests.support import object_stores as st  # noqa: E402
from tests.support.hub_emulator import HubEmulator  # noqa: E402

TINY = REPO / "models" / "tiny-llama"


def widen(out: Path, vocab: int) -> int:
    """The tiny model with ``vocab`` rows in its embedding and LM head; returns the tensor bytes."""
    import random

    out.mkdir(parents=True)
    for p in TINY.iterdir():
        if p.is_file() and p.name != "model.safetensors":
            shutil.copy(p, out / p.name)
    config = json.loads((TINY / "config.json").read_text())
    config["vocab_size"] = vocab
    (out / "config.json").write_text(json.dumps(config, indent=1))
    raw = (TINY / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header.pop("__metadata__", None)
    rnd = random.Random(7)
    tensors, offset, new = [], 0, {}
    for name in sorted(header):
        info = header[name]
        shape = list(info["shape"])
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            shape[0] = vocab
        size = 2
        for dim in shape:
            size *= dim
        new[name] = {"dtype": info["dtype"], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
        # small random bf16 values: the high byte of a float32 in [-0.01, 0.01]
        tensors.append(b"".join(struct.pack("<f", rnd.uniform(-0.01, 0.01))[2:] for _ in range(min(size // 2, 4096)))
                       .ljust(size, b"\0")[:size])
    text = json.dumps(new, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with (out / "model.safetensors").open("wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        for chunk in tensors:
            fh.write(chunk)
    return offset


class ThrottlingProxy:
    """127.0.0.1:port -> target, at most ``rate`` bytes per second from the server, over all its
    connections together (one link: a streamer's parallel ranged reads share it)."""

    def __init__(self, target_port: int, rate: float) -> None:
        self.target, self.rate = target_port, rate
        self.lock = threading.Lock()
        self.next_free = 0.0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _wait_turn(self, n: int) -> None:
        with self.lock:
            start = max(time.monotonic(), self.next_free)
            self.next_free = start + n / self.rate
            done_at = self.next_free
        delay = done_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _pipe(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if throttled:
                    self._wait_turn(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--mbps", type=float, default=20.0, help="megabytes per second from each server")
    parser.add_argument("--vocab", type=int, default=204_800, help="rows of the widened embedding and LM head")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    tmp = Path(tempfile.mkdtemp(prefix="bench-objstore-"))
    model = tmp / "wide"
    tensor_bytes = widen(model, args.vocab)
    hub_root = tmp / "hub"
    shutil.copytree(model, hub_root / "bench" / "wide")
    moto = st.start_moto(tmp)
    st.upload_s3(moto, "models", "wide", model)
    rate = args.mbps * 1e6
    with HubEmulator(hub_root, lfs_threshold=100_000) as hub:
        hub_port = int(hub.url.rsplit(":", 1)[1])
        hub_proxy, s3_proxy = ThrottlingProxy(hub_port, rate), ThrottlingProxy(moto.port, rate)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KAITO_", "AWS_", "VLLM_"))}
        base.update(PYTHONUNBUFFERED="1", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                    HF_HOME=str(tmp / "hf-home"))
        s3_env = {**base, **st.s3_env(moto), "AWS_ENDPOINT_URL": s3_proxy.url}
        hub_env = {**base, "HF_ENDPOINT": hub_proxy.url}
        print(f"model: tiny Llama widened to vocab {args.vocab}: {tensor_bytes / 1e6:.1f} MB of tensors; "
              f"throttle {args.mbps:g} MB/s from each server (all connections together)", flush=True)
        results: dict[str, list[float]] = {"hub": [], "s3": []}
        try:
            for rep in range(args.reps):
                for kind in ("hub", "s3"):
                    port = st.free_port()
                    weights = tmp / f"w-{kind}-{rep}"  # fresh: the hub run downloads every time
                    source = "bench/wide" if kind == "hub" else "s3://models/wide"
                    argv = [kaito_run_bin(), "--model", source, "--weights-dir", str(weights), "--host", "127.0.0.1",
                            "--port", str(port)]
                    check = ReadinessCheck(host="127.0.0.1", port=port, served_name=("wide",))
                    run = measure(kind, argv, hub_env if kind == "hub" else s3_env, check, args.timeout)
                    weights_line = next((line for _, line in run.lines if "weights ready" in line), "")
                    print(f"{kind} rep {rep + 1}: ready {run.ready_s if run.ready_s is None else round(run.ready_s, 2)} s"
                          f" | {weights_line.strip()[:110]}", flush=True)
                    if run.ready_s is not None:
                        results[kind].append(run.ready_s)
        finally:
            hub_proxy.close()
            s3_proxy.close()
            moto.stop()
    for kind, values in results.items():
        print(f"{kind:4} start-to-ready: median {statistics.median(values):.2f} s (runs: "
              f"{', '.join(f'{v:.2f}' for v in values)})" if values else f"{kind}: no run got ready")
    if results["hub"] and results["s3"]:
        ratio = statistics.median(results["s3"]) / statistics.median(results["hub"])
        print(f"ratio s3/hub (start-to-ready, medians): {ratio:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
