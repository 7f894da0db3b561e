"""Fake side effects for kaito_runtime.api (its ``Effects`` seam): a vLLM that is "installed",
a supervisor that records what it was asked to start, a port check that records, and the real
weights step unless a test hands in its own. Everything is recorded in ``events``, in order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from kaito_runtime import api, observe
from kaito_runtime.launch import ports
from kaito_runtime.launch.supervisor import SupervisorResult
from kaito_runtime.launch.vllm_install import VllmInstall

FAKE_INSTALL = VllmInstall(version="0.32.0", cpu_build=False, entrypoint=("vllm", "serve"), model_as_flag=False)


def install_with_sources(folder: Path, *, registry: str = "", parallel: str = "") -> VllmInstall:
    """A fake install whose package folder holds the two source files the launcher reads
    (the model registry and ParallelConfig), written as given."""
    (folder / "model_executor" / "models").mkdir(parents=True, exist_ok=True)
    (folder / "model_executor" / "models" / "registry.py").write_text(registry)
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "config" / "parallel.py").write_text(parallel)
    return replace(FAKE_INSTALL, package_dir=str(folder))


class Seam:
    """``seam.effects`` goes to ``api.run(..., effects=...)``; ``seam[i]`` is the i-th supervise call."""

    def __init__(self) -> None:
        self.install: VllmInstall | None = FAKE_INSTALL
        self.events: list[tuple] = []
        self.calls: list[dict] = []
        self.result = SupervisorResult(exit_code=0, ready_after=1.5, tail=(), signal_received=None)
        self.real_port_check = False
        self.weights: Callable[..., Any] | None = None  # None: the real weights step

    # -- the four effects ----------------------------------------------------------------------
    def _detect(self) -> VllmInstall | None:
        self.events.append(("detect",))
        return self.install

    def _check_port(self, host: str, port: int) -> None:
        self.events.append(("port", host, port))
        if self.real_port_check:
            ports.check_port_free(host, port)

    def _ensure(self, source, **kwargs):
        self.events.append(("weights", source, kwargs))
        if self.weights is not None:
            return self.weights(source, **kwargs)
        from kaito_runtime import weights

        return weights.ensure_weights(source, **kwargs)

    def _supervise(self, argv, env, **kwargs) -> SupervisorResult:
        self.events.append(("supervise", tuple(argv)))
        self.calls.append({"argv": tuple(argv), "env": dict(env), **kwargs})
        if self.result.exit_code == 0 and kwargs.get("on_ready"):
            kwargs["on_ready"](1.5)
        return self.result

    def _observer(self, options: observe.ObserveOptions) -> observe.Observer:
        """The launcher's real status, without its HTTP: tests must not bind this machine's
        5000 and 5090 (tests/observe serve it on free ports)."""
        self.events.append(("observe", options))
        return observe.Observer(replace(options, metrics_port=0, startup_http=False))

    @property
    def effects(self) -> api.Effects:
        return api.Effects(self._detect, self._check_port, self._ensure, self._supervise, self._observer)

    # -- what was recorded ---------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict:
        return self.calls[index]

    @property
    def port_checks(self) -> list[tuple[str, int]]:
        return [(e[1], e[2]) for e in self.events if e[0] == "port"]

    @property
    def fetched(self) -> list[tuple]:
        """(source, keyword arguments) of each weights step."""
        return [(e[1], e[2]) for e in self.events if e[0] == "weights"]

    def kinds(self) -> list[str]:
        """The effects in order (the observer's start left out: every run has one)."""
        return [e[0] for e in self.events if e[0] != "observe"]
