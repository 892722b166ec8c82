"""The study beyond one label per text (issue 27): GoEmotions-Ekman (multi-label) and STS-B (regression).

    python -m benchmarks.tasks_study --recipes goemotions,goemotions-balanced --seeds 42,43
    python -m benchmarks.tasks_study --recipes stsb --seeds 42,43
    python -m benchmarks.tasks_study --run_missing false          # the tables of what ran

A recipe is a shipped config plus its arguments (``RECIPES``). Each (recipe, seed) is ``fit`` with
``--seed_everything <seed>``; its best checkpoint (by the val metric: ``val_macro_f1``, ``val_pearson``) then
scores val and test row by row. Every run is appended to ``--json_path`` as it finishes, with its command, seed,
device and commit; a run already there is not repeated.

Choices are made on val only: GoEmotions' decision threshold (one for every label, on a grid of 0.05 to 0.95 by
0.01; and, as a second row, one per label) is the one with the best val macro-F1, then applied to test; STS-B's
val is 10% of train with no sentence on both sides. Reported: test macro-F1 (GoEmotions) and dev Pearson /
Spearman (STS-B), mean and sample sd over seeds; per label the F1 with and without class weights, with a paired
bootstrap over the test comments (the unit the runs share) of the seed-mean F1 difference.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_f1_score

from benchmarks.compare import commit, device_name, mean_sd
from lora_lightning.cli import cli_main
from lora_lightning.lora import count_parameters
from lora_lightning.model import LoRAClassifier

RECIPES = {
    "goemotions": ["--config", "configs/goemotions.yaml"],
    "goemotions-balanced": ["--config", "configs/goemotions.yaml", "--model.class_weights", "balanced"],
    "goemotions-6ep": ["--config", "configs/goemotions.yaml", "--trainer.max_epochs", "6"],
    "stsb": ["--config", "configs/stsb.yaml"],
}
GRID = [round(0.05 + 0.01 * i, 2) for i in range(91)]
BOOTSTRAP_SAMPLES = 2_000


@torch.no_grad()
def outputs(model: LoRAClassifier, loader) -> torch.Tensor:
    """``(N, K)``: the problem type's outputs (probabilities, values) of every row, in the dataset's order."""
    order = list(loader.sampler)
    model.eval()
    rows = [model.task.outputs(model(**{k: v.to(model.device) for k, v in batch.items() if k != "labels"}))
            for batch in loader]
    out = torch.empty(len(order), rows[0].shape[1])
    out[torch.tensor(order)] = torch.cat(rows).float().cpu()
    return out


def f1_per_label(probs: torch.Tensor, targets: torch.Tensor, thresholds) -> torch.Tensor:
    """``(K,)`` F1 of each label at its threshold (a float for all, or ``(K,)``); an empty label's F1 is 0."""
    t = torch.as_tensor(thresholds, dtype=probs.dtype).expand(probs.shape[1])
    return torch.stack([binary_f1_score((probs[:, k] >= t[k]).long(), targets[:, k].long()) for k in range(probs.shape[1])])


def choose_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float]]:
    """On val: the one threshold with the best macro-F1, and each label's own best threshold (``GRID``)."""
    table = torch.stack([f1_per_label(probs, targets, t) for t in GRID])  # (len(GRID), K)
    common = GRID[int(table.mean(1).argmax())]
    per_label = [GRID[int(i)] for i in table.argmax(0)]
    return common, per_label


def pearson_spearman(pred: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    return float(pearson_corrcoef(pred, true)), float(spearman_corrcoef(pred, true))


def run(recipe: str, seed: int, log_dir: str, extra: list[str]) -> dict:
    """Fit one recipe with one seed, score its best checkpoint on val and test, return its record."""
    version = f"{recipe}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["fit", *RECIPES[recipe], "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", log_dir,
            "--trainer.logger.init_args.name", "tasks", "--trainer.logger.init_args.version", version,
            "--trainer.enable_progress_bar", "false", *extra]
    start = time.perf_counter()
    cli = cli_main(args)
    minutes = (time.perf_counter() - start) / 60
    best = cli.trainer.checkpoint_callback
    model = LoRAClassifier.load_from_checkpoint(best.best_model_path, map_location="cpu", weights_only=True)
    dm = cli.datamodule
    trainable, total = count_parameters(model.model)
    record = {
        "recipe": recipe, "seed": seed, "problem_type": model.task.problem_type, "epochs": cli.trainer.max_epochs,
        "best_epoch": int(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["epoch"]),
        "options": {k: model.hparams.get(k) for k in ("r", "lora_alpha", "target_modules", "learning_rate",
                                                      "class_weights")},
        "class_weights": model.task.class_weight.tolist() if model.task.class_weight is not None else None,
        "names": model.label_names, "trainable_params": trainable, "total_params": total,
        "trainable_pct": round(100 * trainable / total, 4), "monitor": best.monitor,
        "val_monitor": round(float(best.best_model_score), 4), "fit_minutes": round(minutes, 1),
        "device": device_name(cli.trainer), "precision": str(cli.trainer.precision), "commit": commit(),
        "date": date.today().isoformat(), "command": "python -m lora_lightning " + shlex.join(args),
    }
    val, test = (outputs(model, loader()) for loader in (dm.val_dataloader, dm.test_dataloader))
    val_y, test_y = (torch.tensor(dm.datasets[s]["labels"], dtype=torch.float32) for s in ("val", "test"))
    if model.task.problem_type == "regression":
        (vp, vs), (tp, ts) = pearson_spearman(val[:, 0], val_y[:, 0]), pearson_spearman(test[:, 0], test_y[:, 0])
        record.update(val_pearson=round(vp, 4), val_spearman=round(vs, 4), test_pearson=round(tp, 4),
                      test_spearman=round(ts, 4), test_predictions=[round(v, 3) for v in test[:, 0].tolist()],
                      test_targets=[round(v, 3) for v in test_y[:, 0].tolist()])
        return record
    common, per_label = choose_thresholds(val, val_y)
    at = {"0.5": 0.5, "val": common, "val_per_label": per_label}
    record.update(threshold=common, thresholds_per_label=per_label)
    for name, t in at.items():
        record[f"val_macro_f1_at_{name}"] = round(float(f1_per_label(val, val_y, t).mean()), 4)
        test_f1 = f1_per_label(test, test_y, t)
        record[f"test_macro_f1_at_{name}"] = round(float(test_f1.mean()), 4)
        record[f"test_f1_at_{name}"] = dict(zip(model.label_names, [round(v, 4) for v in test_f1.tolist()]))
    chosen = test >= common  # the test predictions at the val threshold, per label, for the paired tests
    record["test_predictions"] = ["".join("1" if x else "0" for x in row) for row in chosen.tolist()]
    record["test_targets"] = ["".join("1" if x else "0" for x in row) for row in test_y.bool().tolist()]
    return record


def bits(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row] for row in rows], dtype=torch.long)


def paired_f1(a_runs: list[dict], b_runs: list[dict], label: int, seed: int = 0) -> dict:
    """Seed-mean F1 difference A - B of one label on the test rows, with a paired bootstrap (resampling rows)."""
    y = bits(a_runs[0]["test_targets"])[:, label]
    pa = [bits(r["test_predictions"])[:, label] for r in a_runs]
    pb = [bits(r["test_predictions"])[:, label] for r in b_runs]

    def diff(idx):
        fa = statistics.fmean(float(binary_f1_score(p[idx], y[idx])) for p in pa)
        fb = statistics.fmean(float(binary_f1_score(p[idx], y[idx])) for p in pb)
        return fa - fb

    g = torch.Generator().manual_seed(seed)
    full = torch.arange(len(y))
    samples = torch.tensor([diff(torch.randint(len(y), (len(y),), generator=g)) for _ in range(BOOTSTRAP_SAMPLES)])
    low, high = torch.quantile(samples, torch.tensor([0.025, 0.975])).tolist()
    p = min(1.0, 2 * min(float((samples <= 0).float().mean()), float((samples >= 0).float().mean())))
    return {"diff": round(diff(full), 4), "low": round(low, 4), "high": round(high, 4), "p": round(p, 4)}


def summary(runs: list[dict]) -> dict:
    """Per recipe the mean / sd over seeds of what it reports; per label the class-weight effect on GoEmotions."""
    out = {"recipes": [], "class_weights": []}
    names = list(dict.fromkeys(r["recipe"] for r in runs))
    for n in names:
        rs = [r for r in runs if r["recipe"] == n]
        row = {"recipe": n, "seeds": sorted(r["seed"] for r in rs), "trainable_pct": rs[0]["trainable_pct"]}
        keys = (["val_pearson", "test_pearson", "test_spearman"] if rs[0]["problem_type"] == "regression" else
                ["val_macro_f1_at_val", "test_macro_f1_at_0.5", "test_macro_f1_at_val", "val_macro_f1_at_val_per_label",
                 "test_macro_f1_at_val_per_label"])
        for k in keys:
            m, sd = mean_sd([r[k] for r in rs])
            row[k] = {"mean": round(m, 4), "sd": round(sd, 4)}
        out["recipes"].append(row)
    plain = sorted((r for r in runs if r["recipe"] == "goemotions"), key=lambda r: r["seed"])
    weighted = sorted((r for r in runs if r["recipe"] == "goemotions-balanced"), key=lambda r: r["seed"])
    seeds = sorted({r["seed"] for r in plain} & {r["seed"] for r in weighted})
    if seeds:
        a = [r for r in weighted if r["seed"] in seeds]
        b = [r for r in plain if r["seed"] in seeds]
        for k, label in enumerate(a[0]["names"]):
            out["class_weights"].append({"label": label, "seeds": seeds,
                                         "f1_balanced": round(statistics.fmean(r["test_f1_at_val"][label] for r in a), 4),
                                         "f1_unweighted": round(statistics.fmean(r["test_f1_at_val"][label] for r in b), 4),
                                         **paired_f1(a, b, k)})
    return out


def print_tables(s: dict) -> None:
    for row in s["recipes"]:
        cells = " ".join(f"{k} {v['mean']:.4f}±{v['sd']:.4f}" for k, v in row.items() if isinstance(v, dict))
        print(f"{row['recipe']:22} seeds {row['seeds']} trainable {row['trainable_pct']}%  {cells}")
    for row in s["class_weights"]:
        print(f"  {row['label']:9} F1 balanced {row['f1_balanced']:.4f} unweighted {row['f1_unweighted']:.4f} "
              f"diff {row['diff']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}] p {row['p']:.3f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="42,43")
    parser.add_argument("--json_path", default="benchmarks/results/tasks.json")
    parser.add_argument("--log_dir", default="lightning_logs")
    parser.add_argument("--run_missing", default="true", choices=["true", "false"])
    parser.add_argument("--extra", default="", help="more fit arguments, shell-quoted (a quick run's --trainer.max_steps)")
    a = parser.parse_args(argv)
    path = Path(a.json_path)
    runs = json.loads(path.read_text()) if path.is_file() else []
    for recipe in a.recipes.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            if a.run_missing == "false" or any(r["recipe"] == recipe and r["seed"] == seed for r in runs):
                continue
            runs.append(run(recipe, seed, a.log_dir, shlex.split(a.extra)))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(runs, indent=1) + "\n")
    chosen = [r for r in runs if r["recipe"] in a.recipes.split(",")]
    s = summary(chosen)
    print_tables(s)
    return s


if __name__ == "__main__":
    main()
