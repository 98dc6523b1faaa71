"""The timing loop the PyTorch peers share: the same budget rules as benches/measure.ts."""

import statistics
import time


def time_case(fn, budget):
    """Warm up, then time calls until both the iteration count and the time budget are reached."""
    start = time.perf_counter()
    n = 0
    while n < budget["warmupIterations"] or (time.perf_counter() - start) * 1000 < budget["warmupMs"]:
        fn()
        n += 1
    samples = []
    start = time.perf_counter()
    while len(samples) < budget["iterations"] or (time.perf_counter() - start) * 1000 < budget["timeMs"]:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {
        "meanMs": statistics.fmean(samples),
        "medianMs": statistics.median(samples),
        "minMs": min(samples),
        "iterations": len(samples),
    }
