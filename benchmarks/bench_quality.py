"""Keeps the quality study (``benchmarks/quality.py``) working: its quick configuration runs in
CI, end to end, into a temporary directory (the real study takes ≈ 25 minutes)."""
import json

import quality


def test_quality_study_quick(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nhand-written intro\n\n<!-- quality:begin -->\nold\n<!-- quality:end -->\n\nhand-written reading\n")
    results = quality.main(["--quick", "--out", str(tmp_path / "results"), "--doc", str(doc)])
    text = doc.read_text()
    # the generated section was replaced, the hand-written prose around it kept
    assert text.startswith("# Results\n\nhand-written intro") and text.endswith("hand-written reading\n")
    assert "\nold\n" not in text and "### Table 1" in text and "| Taylor |" in text
    for setting in ("direct", "transfer"):
        assert (tmp_path / "results" / f"quality-{setting}.png").stat().st_size > 10_000
        for name, res in results[setting]["methods"].items():
            (point,) = res["points"]
            assert 0.8 * 0.99 <= point["flops"] <= 0.8, (setting, name, point)
            assert point["steps"] == 2  # 20 % of the FLOPs in steps of 10 %: same budget for all
            assert 0 <= point["recovered"] <= 1
    assert results["best_lambda"] in (0.0, 0.01)
    assert json.loads((tmp_path / "results" / "quality.json").read_text())["seed"] == 0


def test_latency_quality_quick(tmp_path, monkeypatch):
    """``benchmarks/latency_quality.py`` end to end in its tiny configuration: a FLOPs run, then
    latency runs to the FLOPs run's measured latency, all re-measured side by side."""
    import latency_quality

    monkeypatch.setenv("FXTAYLOR_CACHE", str(tmp_path / "cache"))
    (res,) = latency_quality.main(["--quick", "--seeds", "0"])
    assert list(res["rows"]) == ["FLOPs", "latency, rank", "latency, knapsack"]
    assert 0 < res["latency_target"] < 2
    for row in res["rows"].values():
        assert 0 < row["latency_ratio"] < 2 and 0 <= row["accuracy"] <= 1 and row["steps"] >= 1
