"""The exact-vs-inexact study (benchmarks/inexact_study.py) end to end in its ``--quick`` mode: a
tiny ConvNeXt trained on the digits, pruned with exact=True and exact=False, its JSON complete
and finite. The full study (docs/inexact.md) is ``python benchmarks/inexact_study.py``."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inexact_study.py"
NUMBERS = ("accuracy_before", "accuracy_pruned", "accuracy_recovered", "flops_ratio", "params_ratio", "latency_ratio",
           "latency_ratio_noise", "latency_ratio_joint", "latency_ratio_joint_noise", "reachable", "prune_s", "recovery_s")


def test_quick_study_writes_complete_json(tmp_path):
    out = tmp_path / "study.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| comparison | mode |" in done.stdout
    r = json.loads(out.read_text())
    for key in ("command", "config", "dense_accuracy", "graphs", "latency_target", "deployment", "environment", "rows",
                "refused", "summary", "markdown", "total_s"):
        assert key in r, key
    assert 0 <= r["dense_accuracy"] <= 1
    g = r["graphs"]
    assert g["inexact"]["prunable_groups"] > g["exact"]["prunable_groups"]  # the opt-in opens the layer-norm groups
    assert g["inexact"]["flops_reachable"] > g["exact"]["flops_reachable"]
    lat = r["latency_target"]
    assert lat["note"] and math.isfinite(lat["reachable_exact"]) and math.isfinite(lat["reachable_inexact"])

    rows = r["rows"]
    assert rows
    for row in rows:
        for k in NUMBERS:
            assert isinstance(row[k], (int, float)) and math.isfinite(row[k]), (k, row)
        for k in ("accuracy_before", "accuracy_pruned", "accuracy_recovered"):
            assert 0 <= row[k] <= 1
        assert 0 < row["flops_ratio"] < 1 and row["latency_ratio"] > 0 and row["latency_ratio_joint"] > 0
        assert row["steps"] >= 1 and row["removed_channels"] > 0
        assert row["mode"] in ("exact", "inexact") and row["exact"] == (row["mode"] == "exact")
        if row["exact"]:
            assert row["removed_in_inexact_groups"] == 0  # exact mode never touches the normalisers' channels
        assert row["accuracy_before"] == r["dense_accuracy"]

    cfg = r["config"]
    for t in cfg["flops_targets"]:  # equal FLOPs: both modes ran and reached the same level
        pair = [x for x in rows if x["comparison"] == "equal FLOPs" and x.get("target_flops") == t]
        assert {x["mode"] for x in pair} == {"exact", "inexact"}
        for x in pair:
            assert x["reached"] and abs(x["flops_ratio"] - t) <= 0.011 * t
    if lat["used"] is not None:
        assert {x["mode"] for x in rows if x["comparison"] == "equal latency"} == {"exact", "inexact"}
    else:
        assert not any(x["comparison"] == "equal latency" for x in rows)
    # below what exact pruning can reach: refused in exact mode, pruned with exact=False
    assert [f["mode"] for f in r["refused"]] == ["exact"] * len(cfg["seeds"])
    assert "cannot be reached" in r["refused"][0]["error"]
    beyond = [x for x in rows if x["comparison"] == "beyond exact"]
    assert beyond and all(x["mode"] == "inexact" for x in beyond)
    assert all(x["flops_ratio"] < 1 - g["exact"]["flops_reachable"] for x in beyond)
    for s in r["summary"]:
        for k in ("flops_ratio", "latency_ratio_joint", "accuracy_pruned", "accuracy_recovered"):
            assert all(math.isfinite(s[k][q]) for q in ("mean", "min", "max", "std")), (k, s)
