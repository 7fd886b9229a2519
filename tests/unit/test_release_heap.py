"""heap.release_freed_heap: the pages of freed tensors go back to the OS (glibc keeps them otherwise)."""

import subprocess
import sys

import pytest

from rlhflab.heap import release_freed_heap

SCRIPT = """
import torch
from rlhflab.heap import release_freed_heap

def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

blocks = [torch.ones(16 * 1024) for _ in range(4000)]  # 64 KiB each (below glibc's mmap threshold): 250 MiB of heap
kept = blocks[::2]
del blocks  # every other block freed: 125 MiB of holes between live blocks, which glibc keeps resident
before = rss_anon()
assert release_freed_heap()
print(before - rss_anon())
"""


@pytest.mark.skipif(not release_freed_heap(), reason="glibc only")
def test_release_freed_heap_returns_the_holes():
    # a fresh process, so nothing else has freed memory in its heap
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    released = int(out.stdout.strip().splitlines()[-1])
    assert released > 100 * 2**20  # of the 125 MiB freed (each hole loses its partial pages)


@pytest.mark.skipif(not release_freed_heap(), reason="glibc only")
def test_release_freed_heap_at_most_once_per_interval():
    assert release_freed_heap()  # no interval: always
    assert not release_freed_heap(min_interval=3600.0)  # the last one was just now
    assert release_freed_heap(min_interval=0.0)
