"""Prints the ratios the benchmarks reported (see ratios.py) at the end of the session."""
from ratios import RATIOS


def pytest_terminal_summary(terminalreporter):
    if not RATIOS:
        return
    terminalreporter.section("fxtaylor benchmark ratios")
    for test, name, value, goal, better, ok in RATIOS:
        if goal is None:
            terminalreporter.write_line(f"{test}: {name} = {value:.3f} (informational)")
            continue
        sign = "<=" if better == "lower" else ">="
        terminalreporter.write_line(f"{test}: {name} = {value:.3f} (goal {sign} {goal}) {'met' if ok else 'MISSED'}")
