"""benchmarks/gpu_bench.py (issue 21), prepared on CPU: its smoke run executes every row's code and writes the JSON a
GPU session fills in."""

import json
from pathlib import Path

from benchmarks import gpu_bench


def test_smoke_run_writes_every_row(tmp_path, toy_glue_dir, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(Path(toy_glue_dir).parent))
    result = gpu_bench.main(smoke=True, out=str(tmp_path / "gpu.json"), log_dir=str(tmp_path / "logs"))
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved == json.loads(json.dumps(result)) and saved["device"].startswith("CPU")
    names = [(r["row"], r.get("precision")) for r in saved["rows"]]
    assert names == [("exact", None), ("package eager", "bf16-mixed"), ("peft + plain loop", "bf16-mixed"),
                     ("package eager", "32-true"), ("peft + plain loop", "32-true"),
                     ("fit eager fp32", None), ("fit fast fp32", None), ("fit fast bf16-mixed", None)]
    for row in saved["rows"][1:5]:
        assert row["samples_per_s"] > 0 and 0 < row["mfu_vs_bf16_peak"] < 1
    for row in saved["rows"][5:]:
        assert row["steps"] == 4 and 0 <= row["dev_acc"] <= 1 and row["fit_seconds"] > 0
