"""The reachability probe answers in about its timeout, open port or not."""

import socket
import time

from effnet.online import reachable


def test_a_listening_port_is_reachable_and_a_closed_one_is_not():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        assert reachable(f"http://127.0.0.1:{port}")
    finally:
        server.close()
    started = time.perf_counter()
    assert not reachable(f"http://127.0.0.1:{port}", timeout=1.0)
    assert not reachable("not a url")
    assert time.perf_counter() - started < 5
