"""The parameter-efficiency sweep (benchmarks/sweep.py), on the tiny model and the toy set."""

import csv
from pathlib import Path

import pytest

from benchmarks import sweep

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_rows_csv_and_plot(tiny_model_dir, toy_glue_dir, tmp_path):
    """The lr check picks on val_acc, r4 reuses that run, counts are exact, the CSV resumes, the PNG is drawn."""
    out_csv, png = tmp_path / "sweep.csv", tmp_path / "sweep.png"
    extra = (f"--model.model_name_or_path {tiny_model_dir} --data.data_dir {toy_glue_dir} --data.batch_size 16 "
             "--trainer.accelerator cpu --trainer.enable_progress_bar false --trainer.enable_model_summary false")
    records = sweep.main("lr,r4,r8-all,full,dora-r4,loraplus-r4-lr2e-3,megabatch-r4", csv_path=str(out_csv), png=str(png), log_dir=str(tmp_path / "logs"),
                         config=str(ROOT / "configs/sst2.yaml"), extra=extra)
    rows = {r["row"]: r for r in csv.DictReader(out_csv.open())}
    assert list(rows) == ["lr3e-4", "lr1e-3", "lr3e-3", "r4", "r8-all", "full", "dora-r4", "loraplus-r4-lr2e-3", "megabatch-r4"]
    lever = rows["megabatch-r4"]
    assert lever["variant"] == "megabatch" and "--data.length_grouping megabatch" in lever["command"]
    assert [rows[k]["variant"] for k in ("r4", "dora-r4", "loraplus-r4-lr2e-3")] == ["plain", "dora", "loraplus16"]
    # DoRA adds one magnitude per output row: 2 layers x (query, value) x 32
    assert int(rows["dora-r4"]["trainable_params"]) == 2 * 2 * 4 * (32 + 32) + 2 * 2 * 32 + 66
    assert float(rows["dora-r4"]["learning_rate"]) == float(rows["r4"]["learning_rate"])  # the lr check's winner
    assert float(rows["loraplus-r4-lr2e-3"]["learning_rate"]) == 2e-3 and "--model.loraplus_lr_ratio 16.0" in rows["loraplus-r4-lr2e-3"]["command"]
    best = max(("lr3e-4", "lr1e-3", "lr3e-3"), key=lambda k: float(rows[k]["val_acc"]))
    assert rows["r4"]["learning_rate"] == rows[best]["learning_rate"] == rows["r8-all"]["learning_rate"]
    assert rows["r4"]["dev_acc"] == rows[best]["dev_acc"]
    # tiny BERT: 2 layers x (query, value) x r=4 x (32 + 32) + head 66
    assert int(rows["lr1e-3"]["trainable_params"]) == 2 * 2 * 4 * (32 + 32) + 66
    # r=8 on q, k, v, attention.output.dense (32->32), intermediate.dense (32->64), output.dense (64->32)
    assert int(rows["r8-all"]["trainable_params"]) == 2 * 8 * (4 * 64 + 96 + 96) + 66
    assert rows["full"]["trainable_pct"] == "100.0" and float(rows["full"]["learning_rate"]) == 5e-5
    assert all(r["dev_n"] == "40" for r in rows.values())  # the toy dev set
    assert all(0 <= float(r["dev_acc"]) <= 1 and r["command"].startswith("python -m lora_lightning fit") for r in rows.values())
    assert png.stat().st_size > 10_000
    before = out_csv.read_text()
    again = sweep.main("lr,r4", csv_path=str(out_csv), png=str(png), extra="--no-such-option 1")  # nothing runs
    assert len(records) == len(again) == 9 and out_csv.read_text() == before


def test_old_csv_gains_the_variant_column(tmp_path):
    """A sweep.csv written before the variant column is rewritten once, its rows kept, as `plain`."""
    old = tmp_path / "sweep.csv"
    old.write_text("row,finetune,r,val_acc\nr4,lora,4,0.9\n")
    records = sweep.read_csv(old)
    assert records[0]["variant"] == "plain" and records[0]["val_acc"] == "0.9"
    assert old.read_text().splitlines()[0] == ",".join(sweep.FIELDS)


def test_rank_rows_need_the_lr_check_first():
    with pytest.raises(ValueError, match="run --rows lr"):
        sweep.row_options("r8", best_lr=None)
    partial = [{"row": "lr3e-4", "val_acc": "0.9", "learning_rate": "0.0003"}]  # lr check not finished
    assert sweep.best_learning_rate(partial) is None
    assert sweep.best_learning_rate([*partial, {"row": "lr1e-3", "val_acc": "0.95", "learning_rate": "0.001"},
                                     {"row": "lr3e-3", "val_acc": "0.5", "learning_rate": "0.003"}]) == 1e-3
    with pytest.raises(ValueError, match="unknown sweep row 'r8-mlp'"):
        sweep.main("r8-mlp")
