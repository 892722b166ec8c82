"""The final recipe comparison (benchmarks/compare.py): its paired tests, and a run on the tiny model."""

import json
import math
from pathlib import Path

from benchmarks import compare

ROOT = Path(__file__).resolve().parents[1]


def test_mcnemar_exact_p():
    """10 sentences only A gets right, 2 only B: p = 2 (C(12,0) + C(12,1) + C(12,2)) / 2^12."""
    a = [True] * 10 + [False] * 2 + [True] * 50 + [False] * 5
    b = [False] * 10 + [True] * 2 + [True] * 50 + [False] * 5
    only_a, only_b, p = compare.mcnemar_p(a, b)
    assert (only_a, only_b) == (10, 2)
    assert math.isclose(p, 2 * (1 + 12 + 66) / 4096)
    assert compare.mcnemar_p(a, a) == (0, 0, 1.0)
    assert compare.mcnemar_p([True] * 3 + [False] * 3, [False] * 3 + [True] * 3)[2] == 1.0  # 3 vs 3: no evidence


def test_paired_bootstrap_interval():
    """Same outcomes: a zero-width interval at 0, p = 1; A right on 20 more of 100: interval around +0.2."""
    same = [True, False] * 50
    assert compare.paired_bootstrap(same, same, samples=500) == (0.0, 0.0, 1.0)
    a = [True] * 80 + [False] * 20
    b = [True] * 60 + [False] * 40
    low, high, p = compare.paired_bootstrap(a, b, samples=2000)
    assert 0.1 < low < 0.2 < high < 0.3 and p < 0.01


def test_summary_means_pools_and_tolerates_a_cut_run():
    """Two recipes x two seeds on 4 dev sentences: means and sds per recipe, the pooled McNemar counts every
    (seed, sentence) pair, val - dev per run, and a run cut short (fit_minutes None) leaves the time mean to the others."""
    def rec(recipe, seed, preds, val, minutes):
        return {"recipe": recipe, "seed": seed, "trainable_pct": 1.0, "val_acc": val, "fit_minutes": minutes,
                "dev_predictions": preds, "dev_labels": "1100", "dev_acc": sum(p == y for p, y in zip(preds, "1100")) / 4}
    runs = [rec("a", 1, "1100", 0.9, 10.0), rec("a", 2, "1101", 0.8, None),
            rec("b", 1, "0000", 0.6, 4.0), rec("b", 2, "0100", 0.7, 6.0)]
    result = compare.summary(runs, order=["b", "a"])
    b, a = result["recipes"]
    assert (a["recipe"], a["dev_acc_mean"], a["fit_minutes_mean"]) == ("a", 0.875, 10.0)
    assert (b["dev_acc_mean"], b["fit_minutes_mean"], b["val_acc_mean"]) == (0.625, 5.0, 0.65)
    assert math.isclose(a["dev_acc_sd"], 0.1768, abs_tol=1e-4)  # sample sd of 1.0 and 0.75
    (pooled,) = result["pooled"]
    assert (pooled["a"], pooled["b"], pooled["only_a_right"], pooled["only_b_right"]) == ("b", "a", 1, 3)
    assert pooled["difference"] == -0.25
    assert [g["gap"] for g in result["val_vs_dev"]["runs"]] == [-0.1, 0.05, 0.1, -0.05]


def test_compare_runs_tests_and_resumes(tiny_model_dir, toy_glue_dir, tmp_path):
    """Two recipes, one seed: dev predictions match dev_acc, the pair is tested, a second call runs nothing."""
    out = tmp_path / "compare.json"
    extra = (f"--model.model_name_or_path {tiny_model_dir} --data.data_dir {toy_glue_dir} --data.batch_size 16 "
             "--trainer.accelerator cpu --trainer.enable_model_summary false")
    results = compare.main("default,full", seeds="7", epochs=1, json_path=str(out), log_dir=str(tmp_path / "logs"), extra=extra)
    default, full = results["runs"]
    assert (default["recipe"], full["recipe"]) == ("default", "full") and default["seed"] == full["seed"] == 7
    assert full["trainable_pct"] == 100.0 and full["learning_rate"] == 1e-4 and default["learning_rate"] == 1e-3
    for r in (default, full):
        assert len(r["dev_predictions"]) == r["dev_n"] == 40  # the toy dev set
        correct = sum(p == y for p, y in zip(r["dev_predictions"], r["dev_labels"]))
        assert correct == r["dev_correct"] and round(correct / 40, 4) == r["dev_acc"]  # same as Lightning's test_acc
        assert len(r["val_acc_curve"]) == 1 and r["val_acc_curve"][-1] == r["val_acc"]
        assert r["checkpoint_bytes"] > 0 and "--seed_everything 7" in r["command"]
        assert r["split"] == "by_sentence" and r["precision"] == "32-true" and r["device"].startswith("CPU")
        assert len(r["val_predictions"]) == len(r["val_labels"]) > 0
    (test,) = results["summary"]["per_seed"]
    assert (test["a"], test["b"], test["seed"]) == ("default", "full", 7)
    assert test["difference"] == round(default["dev_acc"] - full["dev_acc"], 4)
    assert test["only_a_right"] - test["only_b_right"] == default["dev_correct"] - full["dev_correct"]
    before = out.read_text()
    again = compare.main("default,full", seeds="7", json_path=str(out), extra="--no-such-option 1")
    after = json.loads(out.read_text())
    assert json.loads(before)["runs"] == again["runs"] == after["runs"]  # nothing ran again
    summaries = after["summaries"]  # each call's tables kept under its own key
    assert summaries["epochs=None recipes=default,full"] == summaries["epochs=1 recipes=default,full"] == again["summary"]
