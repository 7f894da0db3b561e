"""Streaming completions for the drain tests: each stream records how many chunks came, the last
finish reason and ``usage.completion_tokens`` (or the error that ended it)."""

from __future__ import annotations

import json
import threading
import urllib.request


def start_streams(base: str, payload: dict, count: int, timeout: float,
                  headers: dict[str, str] | None = None) -> tuple[list[threading.Event], list[dict], list[threading.Thread]]:
    """``count`` streaming completions of ``payload`` to ``base``/v1/completions, each in a
    thread; an event per stream is set at its first chunk (or when it ends)."""
    first_chunk = [threading.Event() for _ in range(count)]
    results: list[dict] = [{} for _ in range(count)]

    def stream(i: int) -> None:
        request = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json", **(headers or {})})
        chunks, finish, tokens = 0, None, None
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                for raw in response:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
                    if event.get("choices"):
                        chunks += 1
                        finish = event["choices"][0].get("finish_reason") or finish
                        first_chunk[i].set()
        except Exception as error:  # noqa: BLE001 - recorded and asserted by the caller
            results[i]["error"] = repr(error)
        results[i].update(chunks=chunks, finish=finish, tokens=tokens)
        first_chunk[i].set()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    return first_chunk, results, threads
