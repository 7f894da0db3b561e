"""kaito_runtime.launch.ports: a port in use is found before vLLM starts."""

from __future__ import annotations

import socket

import pytest

from kaito_runtime.errors import InputError
from kaito_runtime.launch.ports import check_port_free


def test_a_listening_port_is_refused_with_the_flag_to_change():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError) as caught:
            check_port_free("127.0.0.1", port)
        # 0.0.0.0 covers 127.0.0.1: a server there blocks a wildcard bind too.
        with pytest.raises(InputError):
            check_port_free("0.0.0.0", port)
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(f"Port {port} on 127.0.0.1 is already in use.")
    assert "--port (KAITO_PORT)" in caught.value.message


def test_a_free_port_passes_and_is_left_free():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # the check's own socket is closed at once
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_an_address_this_machine_lacks_is_left_to_vllm():
    check_port_free("203.0.113.7", 5000)  # TEST-NET-3: not ours; vLLM reports it in its own words
