"""effnet.bench.machine: the CPU's name, the load, and the peak memory of this process and its children."""

import os
import subprocess
import sys
import time

from effnet.bench.machine import MemoryWatch, _children, cpu_name, load_average


def test_the_machine_has_a_name_and_a_load():
    assert cpu_name()
    load = load_average()
    assert load is None or load >= 0


def test_a_memory_watch_sees_this_process_and_its_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 * 10**6); time.sleep(3)"])
    try:
        with MemoryWatch(cuda=False) as memory:
            assert child.pid in _children(os.getpid())
            time.sleep(2)  # the watch samples every 0.5 s
    finally:
        child.kill()
        child.wait()
    measured = memory.as_dict()
    assert measured["main_rss_mb"] > 0
    assert measured["workers_private_mb"] > 50, "the child's 64 MB bytearray is its own"
    assert measured["gpu_max_allocated_mb"] is None and measured["gpu_max_reserved_mb"] is None
