"""GEMM rate against the number of rows, at the 410 M shape's linear layers (fp32, this machine's threads).

    python bench/gemm_rows.py

Generation multiplies B rows per token (16 or 32), an update micro-batch 2 × 61 = 122, a scoring pass 8 × 61 = 488:
the same weights run at very different rates, which is why generation and small micro-batches stay below the peak.
"""

from __future__ import annotations

import statistics
import time

import torch

SHAPES = {"qkv": (1024, 3072), "h_to_4h": (1024, 4096), "4h_to_h": (4096, 1024), "lm_head": (1024, 50304)}


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, fp32; median of 10 after 3 warm-ups")
    for rows in (32, 122, 488):
        for name, (k, n) in SHAPES.items():
            x, w = torch.randn(rows, k), torch.randn(n, k)
            for _ in range(3):
                torch.nn.functional.linear(x, w)
            times = []
            for _ in range(10):
                start = time.perf_counter()
                torch.nn.functional.linear(x, w)
                times.append(time.perf_counter() - start)
            t = statistics.median(times)
            rate = 2 * rows * k * n / t / 1e9
            print(f"rows {rows:4d}  {name:8s} ({k} -> {n}): {t * 1e3:8.2f} ms  {rate:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
