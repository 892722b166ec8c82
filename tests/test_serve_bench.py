"""benchmarks/serve_bench.py (issue 28): its smoke run (the tiny model, no HTTP) executes every engine row's code and
writes the JSON; the numbers themselves live in benchmarks/results/serve_bench.json, measured on real data."""

import json

from benchmarks import serve_bench


def test_smoke_run_writes_every_engine_row(tmp_path, tiny_model_dir, toy_glue_dir):
    result = serve_bench.main(["--smoke", "true", "--http", "false", "--model", tiny_model_dir, "--glue_dir", toy_glue_dir,
                               "--json_path", str(tmp_path / "s.json"), "--work_dir", str(tmp_path / "w")])
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved == json.loads(json.dumps(result)) and set(saved["rows"]) == {"all-linear", "query-value"}
    for row in saved["rows"].values():
        assert all(row[k] > 0 for k in ("merged", "engine_mixed", "engine_one_adapter", "peft_mixed"))
        assert row["memory"]["per_adapter_tensor_bytes"] > 0 and row["memory"]["merged_copy_bytes"] > 0
