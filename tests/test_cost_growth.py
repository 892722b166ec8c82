"""How cost grows (benchmarks/cost_growth.py), on the tiny model: every axis, exact counts, the skips."""

import json
import signal
from types import SimpleNamespace

import pytest
import torch

from benchmarks import cost_growth

ALL_SIX = "query+key+value+output.dense+intermediate.dense"


def lora_params(r: int, per_layer: list[tuple[int, int]]) -> int:
    """Trainable parameters of the tiny BERT (2 layers): LoRA ``r (in + out)`` per adapted Linear, head 32 x 2 + 2."""
    return 2 * sum(r * (i + o) for i, o in per_layer) + 66


def test_every_axis_on_the_tiny_model(tiny_model_dir, tmp_path):
    """One row per axis value, positive numbers, tokens/s = samples/s x length, exact trainable and adapted
    counts (``output.dense`` is the attention output's and the FFN output's), the JSON and the PNG written."""
    out, png = tmp_path / "cost.json", tmp_path / "cost.png"
    targets = ["query", ALL_SIX]
    result = cost_growth.main(model=tiny_model_dir, quick=True, target_sets=targets, base_targets="query",
                              steps=2, eval_steps=2, warmup=1, json=str(out), png=str(png))
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    rows = data["rows"]
    assert [(r["axis"], r["value"]) for r in rows] == [
        ("batch", 2), ("batch", 4), ("length", 8), ("length", 16), ("rank", 1), ("rank", 2),
        *(("targets", t) for t in targets), ("eval", 2), ("eval", 4)]
    for r in rows:
        assert "skipped" not in r, r
        for key in ("samples_per_s", "tokens_per_s", "ms_per_step", "gflops", "gflop_per_step", "peak_rss_mib"):
            assert r[key] > 0, (key, r)
        assert r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * r["length"], rel=1e-12)
        assert r["samples_per_s"] == pytest.approx(1000 * r["batch"] / r["ms_per_step"], rel=1e-12)
        assert r["threads"] == data["meta"]["threads"] and len(r["step_ms_all"]) == 2
        assert r["kind"] == ("eval" if r["axis"] == "eval" else "train")
    q = [(32, 32)]  # query: 32 -> 32
    by = {(r["axis"], r["value"]): r for r in rows}
    assert by["rank", 1]["trainable_params"] == lora_params(1, q) == 194
    assert by["rank", 2]["trainable_params"] == lora_params(2, q) == 322
    assert by["batch", 4]["trainable_params"] == by["eval", 2]["trainable_params"] == 322  # base: r 2 on query
    # all six: q, k, v, attention output (32 -> 32), intermediate.dense (32 -> 64), FFN output.dense (64 -> 32)
    assert by["targets", ALL_SIX]["trainable_params"] == lora_params(2, 4 * q + [(32, 64), (64, 32)]) == 1858
    assert [by["targets", t]["adapted_linears"] for t in targets] == [2 * 1, 2 * 6]
    base = [by[k]["ms_per_step"] for k in (("batch", 2), ("length", 8), ("rank", 2), ("targets", "query"))]
    assert len(set(base)) == 1  # the base point, measured once
    assert data["meta"]["base"] == {"batch": 2, "length": 8, "r": 2, "targets": "query"}
    assert data["meta"]["command"].startswith("python -m benchmarks.cost_growth --axes batch,length,rank,targets,eval")
    assert png.stat().st_size > 10_000


def test_step_flops_by_hand():
    """MiniLM-L6's shapes at batch 32, length 64, r 4 on query+value: forward per token 2 x 6 x (4 d^2 + 2 d f + 2 T d)."""
    config = SimpleNamespace(hidden_size=384, intermediate_size=1536, num_hidden_layers=6)
    d, f, t = 384, 1536, 64
    forward = 2 * 6 * (4 * d * d + 2 * d * f + 2 * t * d)
    lora = 12 * 2 * 4 * (d + d)  # 12 adapted Linears x 2 FLOPs x r (in + out)
    qv = [(d, d)] * 12
    assert cost_growth.step_flops(config, 32, t, 4, qv) == 32 * t * (2 * forward + 3 * lora)
    assert cost_growth.step_flops(config, 32, t, 4, qv, train=False) == 32 * t * (forward + lora)


def test_out_of_memory_is_a_skip_not_a_crash(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """An allocation failure in a step skips that point with a note; the tables, JSON and figure still come."""

    class NoMemoryAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes.")

    monkeypatch.setattr(torch.optim, "AdamW", NoMemoryAdamW)
    result = cost_growth.main(model=tiny_model_dir, axes="batch", batch_sizes=[2], base_length=8, steps=1, warmup=0,
                              isolate=False, json=str(tmp_path / "c.json"), png=str(tmp_path / "c.png"))
    assert result["rows"][0]["skipped"].startswith("out of memory (DefaultCPUAllocator")
    assert "skipped: out of memory" in capsys.readouterr().out
    assert (tmp_path / "c.png").is_file()


def test_a_killed_point_process_is_a_skip():
    """A child killed by signal 9 (the kernel's OOM killer) answers a skip note instead of hanging the run."""
    assert "OOM killer" in cost_growth.isolated_point(signal.raise_signal, signal.SIGKILL)["skipped"]
