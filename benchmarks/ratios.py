"""Benchmarks report ratios measured in the same run (machines are noisy; absolute times are not
comparable across runs). Each benchmark stores ``ratio_*`` entries, with their goal, in
``benchmark.extra_info``; they are listed at the end of the session.

    pytest benchmarks --benchmark-enable            # times and ratios
    pytest benchmarks                               # CI: --benchmark-disable, runs each once
"""
import gc
import statistics
import time

RATIOS = []


def interleaved_medians(fns, rounds):
    """Median seconds of each function, run alternately so drift hits all of them alike."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            # garbage left by earlier benchmarks (fx graphs, torch-pruning's dependency graphs are
            # full of reference cycles) otherwise lands a slow full collection inside whichever
            # call allocates most: densenet201's trace measured 0.45× tp's alone, 1.39× after
            # the other graph benchmarks in one process
            gc.collect()
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def report(benchmark, name, value, goal, better="lower"):
    """Record ``value`` against ``goal`` (None: informational, no goal to meet)."""
    benchmark.extra_info[name] = round(value, 4)
    benchmark.extra_info[name + "_goal"] = goal
    ok = None if goal is None else (value <= goal if better == "lower" else value >= goal)
    RATIOS.append((benchmark.name, name, value, goal, better, ok))
