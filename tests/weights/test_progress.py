"""kaito_runtime.weights.progress: the byte count, the rate window, log lines and the bar while the weights download."""

from __future__ import annotations

import json
import logging
import re

import pytest

from kaito_runtime.weights import progress as progress_mod
from kaito_runtime.weights.progress import ProgressLogger, RateWindow, TransferCount, format_eta
from kaito_runtime.weights import ensure_weights
from tests.support.weights_helpers import sha256, spec


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --- units ---------------------------------------------------------------------------------------


def test_transfer_count_tracks_chunks_and_restarts_and_tells_the_bar_every_change():
    changes: list[int] = []
    clock = Clock()
    count = TransferCount({"a": 100, "b": 0}, on_change=changes.append, clock=clock)
    assert count.snapshot() == (100, 0, None)
    count.restart("a", 40)  # its partial was shorter than thought
    clock.t += 2
    count.add("b", 30)
    count.add("b", -10)  # truncated: the server ignored Range
    assert count.snapshot() == (60, 30, 1002.0)
    count.restart("b")  # discarded after a hash mismatch
    assert count.snapshot()[0] == 40
    assert changes == [-60, 30, -10, -20]
    assert 100 + sum(changes) == count.snapshot()[0]  # a bar fed the changes ends where the count is


def test_rate_window_follows_the_recent_rate_not_the_average():
    window = RateWindow(15.0, t0=0.0)
    assert window.rate(5.0, 50_000_000) == pytest.approx(10_000_000)  # a fast start
    received = 50_000_000
    rate = 0.0
    for t in range(10, 65, 5):  # then 100 kB/s for a minute
        received += 500_000
        rate = window.rate(float(t), received)
    assert rate == pytest.approx(100_000)


def test_rate_window_longer_than_the_interval_uses_the_previous_sample():
    window = RateWindow(1.0, t0=0.0)
    window.rate(5.0, 1000)
    assert window.rate(10.0, 6000) == pytest.approx(1000)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"), (3725, "1h02m")])
def test_eta_format(seconds, text):
    assert format_eta(seconds) == text


def test_log_line_before_the_first_byte_while_moving_and_when_stalled():
    clock = Clock()
    count = TransferCount({"a": 1024}, clock=clock)
    logger = ProgressLogger(count, 1024 * 1024 + 1024, logging.getLogger("test.progress"), 5.0, window_s=10.0, clock=clock)
    clock.t += 5
    assert logger.line() == "weights: 1.0 KiB / 1.0 MiB (0%), waiting for the first bytes, ETA ?"
    for _ in range(2):  # 10 KiB/s for 10 s
        clock.t += 5
        count.add("a", 50 * 1024)
        line = logger.line()
    assert line == "weights: 101.0 KiB / 1.0 MiB (10%), 10.0 KiB/s, ETA 1m32s"
    clock.t += 20  # nothing for 20 s: 0 B/s, said plainly, and the ETA from the average so far
    line = logger.line()
    assert line.startswith("weights: 101.0 KiB / 1.0 MiB (10%), 0 B/s (nothing received for 20s), ETA ")
    assert "?" not in line


def test_log_line_never_shows_more_than_the_total():
    clock = Clock()
    count = TransferCount({"a": 0}, clock=clock)
    logger = ProgressLogger(count, 1000, logging.getLogger("test.progress"), 5.0, clock=clock)
    clock.t += 1
    count.add("a", 1500)
    assert logger.line().startswith("weights: 1000 B / 1000 B (100%)")


# --- with the emulated hub -----------------------------------------------------------------------

SLOW_FILE_BYTES = 1_000_000  # far below the client's 10 MiB buffer: it used to move in one step


@pytest.fixture
def slow_hub(tmp_path_factory, hub_env):
    """An emulator serving ``org/slow``: a config and one 1 MB LFS shard, at 250 kB/s."""
    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("slow-repos")
    repo = root / "org" / "slow"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (repo / "model.safetensors").write_bytes(__import__("random").Random(3).randbytes(SLOW_FILE_BYTES))
    with HubEmulator(root, lfs_threshold=1024) as emulator:
        emulator.rate_limit_bps = 250_000
        yield emulator


LINE = re.compile(r"weights: ([\d.]+) (B|KiB|MiB) / 976.6 KiB \((\d+)%\), (.*), ETA (\S+)$")


@pytest.mark.slow
def test_log_lines_move_with_the_bytes_received_on_a_slow_link(slow_hub, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime.weights")
    result = ensure_weights(
        spec("org/slow"), weights_dir=tmp_path, token=None, endpoint=slow_hub.url, progress="log", progress_interval_s=0.5
    )
    assert sha256(result.path / "model.safetensors") == slow_hub.file_entry("org/slow", "model.safetensors").sha256
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    scale = {"B": 1, "KiB": 1024, "MiB": 1024 * 1024}
    held = [float(m.group(1)) * scale[m.group(2)] for m in parsed]
    assert held == sorted(held), lines  # never goes back
    moving = [(h, m) for h, m in zip(held, parsed) if 0 < h < SLOW_FILE_BYTES]
    assert len({h for h, _ in moving}) >= 3, lines  # several distinct amounts before the file is complete
    for _, m in moving:  # once bytes flow: a real rate and an ETA
        assert m.group(4) != "0 B/s" and m.group(4).endswith("KiB/s") and m.group(5) != "?", lines


@pytest.mark.slow
def test_bar_mode_is_fed_chunk_by_chunk_and_ends_at_the_total(slow_hub, tmp_path, monkeypatch):
    slow_hub.rate_limit_bps = 2_000_000
    made: list[object] = []

    class FakeBar:
        def __init__(self, total: int, initial: int) -> None:
            self.total, self.n, self.updates, self.closed = total, initial, 0, False
            made.append(self)

        def add(self, n: int) -> None:
            self.n += n
            self.updates += 1

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            self.closed = True

    from kaito_runtime import weights

    monkeypatch.setattr(weights, "ProgressBar", FakeBar)
    ensure_weights(spec("org/slow"), weights_dir=tmp_path, token=None, endpoint=slow_hub.url, progress="bar")
    (bar,) = made
    assert bar.closed and bar.n == bar.total == SLOW_FILE_BYTES + len(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert bar.updates >= 10  # about one per 64 KiB received, not one per file


def test_real_progress_bar_counts_up_to_the_total():
    bar = progress_mod.ProgressBar(total=300, initial=100)
    with bar:
        bar.add(150)
        bar.add(50)
        assert bar._bar.n == 300
