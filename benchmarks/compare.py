"""The recipe study (issues 11 and 20): recipes x seeds on SST-2, paired tests on GLUE dev.

    python -m benchmarks.compare --recipes default,all-r4 --seeds 42,43 --epochs 1 \\
        --json_path benchmarks/results/screen.json                      # the screen: 1 epoch, 2 seeds
    python -m benchmarks.compare --recipes default,best,full --seeds 42,43,44   # the finals: 3 seeds
    python -m benchmarks.compare --recipes default,best,full --run_missing false  # the tables of what ran

A recipe is ``configs/sst2.yaml`` plus its own arguments (``RECIPES``). Each (recipe, seed) is ``fit``
with ``--seed_everything <seed>`` (initialisation, dropout and batch order; the train/val split stays
``data.seed``'s), then ``test`` of the best checkpoint (by ``val_acc``) on GLUE dev, and that
checkpoint's predictions on val and dev one by one. Every run is appended to ``--json_path`` as it
finishes (with its command, seed, ``split``, device, precision and commit), so a run already there
(same recipe, seed, epochs and split) is not repeated.

The choice of recipe is made on ``val_acc`` only; dev is reported, never chosen on. The statistics
(``summary``):

- per recipe: mean and sample standard deviation of val_acc and dev accuracy over its seeds;
- per seed, each pair of recipes on the same 872 dev sentences: McNemar's exact test (of the sentences
  exactly one recipe gets right, are both kinds of disagreement equally likely?) and a paired
  bootstrap (10,000 resamples of the sentences, seeded) of the accuracy difference;
- pooled over the seeds both recipes ran: McNemar on every (seed, sentence) pair, and a paired
  bootstrap that resamples sentences (the unit the seeds share) of the seed-mean difference;
- how well val_acc predicts dev: per run val_acc - dev_acc, their mean, and Pearson's r over runs.
"""

from __future__ import annotations

import json
import math
import platform
import shlex
import statistics
import subprocess
import time
from datetime import date
from itertools import combinations
from pathlib import Path

import torch

from lora_lightning.cli import cli_main
from lora_lightning.lora import count_parameters

ALL_LINEARS = "[query,key,value,output.dense,intermediate.dense]"  # attention + FFN, not the pooler's dense
FULL = ["--config", "configs/sst2-full.yaml"]  # full fine-tuning at the config's lr (its lr screen's winner)
RECIPES = {
    "default": [],                                                 # r=4 on query+value, lr 1e-3 (the seed's recipe)
    "default-lr2e-3": ["--model.learning_rate", "2e-3"],
    "all-r4": ["--model.target_modules", ALL_LINEARS],
    "all-r4-lr2e-3": ["--model.target_modules", ALL_LINEARS, "--model.learning_rate", "2e-3"],
    "all-r4-dropout0": ["--model.target_modules", ALL_LINEARS, "--model.backbone_dropout", "0.0"],  # the old best's lever
    "all-r8": ["--model.target_modules", ALL_LINEARS, "--model.r", "8"],
    "all-r8-lr2e-3": ["--model.target_modules", ALL_LINEARS, "--model.r", "8", "--model.learning_rate", "2e-3"],
    "all-r16": ["--model.target_modules", ALL_LINEARS, "--model.r", "16"],
    "all-r16-lr2e-3": ["--model.target_modules", ALL_LINEARS, "--model.r", "16", "--model.learning_rate", "2e-3"],
    "best": ["--config", "configs/sst2-best.yaml"],                # the study's winner under 1% trainable
    "full": FULL,
    "full-lr2e-5": FULL + ["--model.learning_rate", "2e-5"],
    "full-lr5e-5": FULL + ["--model.learning_rate", "5e-5"],      # the random split's choice
}
BOOTSTRAP_SAMPLES = 10_000


def mcnemar_p(a_right: list[bool], b_right: list[bool]) -> tuple[int, int, float]:
    """McNemar's exact test on paired outcomes.

    Args:
        a_right, b_right: per sentence, whether recipe A / B got it right (same length N).

    Returns:
        ``(b, c, p)``: sentences only A got right, only B got right, and the two-sided exact p-value
        ``min(1, 2 * P[X <= min(b, c)])`` for ``X ~ Binomial(b + c, 1/2)`` (1.0 when ``b + c == 0``).
    """
    b = sum(x and not y for x, y in zip(a_right, b_right))
    c = sum(y and not x for x, y in zip(a_right, b_right))
    n = b + c
    if n == 0:
        return b, c, 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return b, c, min(1.0, 2 * tail)


def paired_bootstrap(a_right, b_right, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap of the accuracy difference A - B over the same sentences.

    Args:
        a_right, b_right: per sentence, A's / B's score: right (bool) or, pooled over seeds, the share
            of seeds that got it right (float in [0, 1]); same length N.

    Returns:
        ``(low, high, p)``: the 2.5 and 97.5 percentiles of the resampled mean difference, and the
        two-sided p-value ``2 * min(P[diff <= 0], P[diff >= 0])`` (capped at 1).
    """
    diff = torch.tensor(a_right, dtype=torch.float64) - torch.tensor(b_right, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(diff), (samples, len(diff)), generator=g)
    means = diff[idx].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    p = min(1.0, 2 * min((means <= 0).double().mean().item(), (means >= 0).double().mean().item()))
    return low, high, p


@torch.no_grad()
def predictions(model, loader) -> list[int]:
    """Predicted class of every row of ``loader``'s dataset, in the dataset's order (eval mode)."""
    order = list(loader.sampler)  # the loader's dataset indices (sorted by length, or in order)
    model.eval()
    preds = [model(**{k: v.to(model.device) for k, v in batch.items() if k != "labels"}).argmax(-1)
             for batch in loader]
    out = [0] * len(order)
    for i, p in zip(order, torch.cat(preds).tolist()):
        out[i] = p
    return out


def val_curve(log_dir: str) -> list[float]:
    """``val_acc`` at each validation of a run, read from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir)
    events.Reload()
    return [round(e.value, 4) for e in events.Scalars("val_acc")] if "val_acc" in events.Tags()["scalars"] else []


def device_name(trainer) -> str:
    """The accelerator a run used, in words: the GPU's name, or the CPU's model and thread count."""
    if trainer.strategy.root_device.type == "cuda":
        return f"{torch.cuda.get_device_name(trainer.strategy.root_device)}, torch {torch.__version__}"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine()) \
        if Path("/proc/cpuinfo").is_file() else platform.processor() or platform.machine()
    return f"CPU {model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def commit() -> str:
    """The checkout's commit (``git describe``-style short hash, ``-dirty`` with uncommitted changes)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(recipe: str, seed: int, epochs: int | None, log_dir: str, extra: list[str]) -> dict:
    """Fit one recipe with one seed, test its best checkpoint on GLUE dev, return its record."""
    version = f"{recipe}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["fit", "--config", "configs/sst2.yaml", *RECIPES[recipe], "--seed_everything", str(seed),
            "--trainer.logger.init_args.save_dir", log_dir, "--trainer.logger.init_args.name", "compare",
            "--trainer.logger.init_args.version", version, "--trainer.enable_progress_bar", "false"]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    args += extra
    start = time.perf_counter()
    cli = cli_main(args)
    minutes = (time.perf_counter() - start) / 60
    best = cli.trainer.checkpoint_callback
    (result,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    dm = cli.datamodule
    preds = predictions(cli.model, dm.test_dataloader())
    labels = [int(x) for x in dm.datasets["test"]["labels"]]
    val_preds = predictions(cli.model, dm.val_dataloader())
    val_labels = [int(x) for x in dm.datasets["val"]["labels"]]
    trainable, total = count_parameters(cli.model.model)
    return {
        "recipe": recipe, "seed": seed, "finetune": cli.model.hparams.finetune,
        "epochs": cli.trainer.max_epochs, "learning_rate": cli.model.hparams.learning_rate,
        "split": dm.hparams.get("val_split", "random"),
        "options": {k: cli.model.hparams.get(k) for k in ("r", "lora_alpha", "target_modules", "backbone_dropout",
                                                          "lora_dropout", "use_rslora", "use_dora", "loraplus_lr_ratio")},
        "trainable_params": trainable, "total_params": total, "trainable_pct": round(100 * trainable / total, 4),
        "val_acc": round(float(best.best_model_score), 4), "val_acc_curve": val_curve(cli.trainer.log_dir),
        "dev_acc": round(result["test_acc"], 4), "dev_f1": round(result["test_f1"], 4),
        "dev_correct": sum(p == y for p, y in zip(preds, labels)), "dev_n": len(labels),
        "fit_minutes": round(minutes, 1), "checkpoint_bytes": Path(best.best_model_path).stat().st_size,
        "device": device_name(cli.trainer), "precision": str(cli.trainer.precision), "commit": commit(),
        "date": date.today().isoformat(), "command": "python -m lora_lightning " + shlex.join(args),
        "dev_predictions": "".join(map(str, preds)), "dev_labels": "".join(map(str, labels)),
        "val_predictions": "".join(map(str, val_preds)), "val_labels": "".join(map(str, val_labels)),
    }


def right(run: dict) -> list[bool]:
    """Per GLUE dev sentence, whether the run's prediction is right."""
    return [p == y for p, y in zip(run["dev_predictions"], run["dev_labels"])]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_or_none(values: list[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (a run cut short has no fit time), to 0.1; ``None`` if none."""
    known = [v for v in values if v is not None]
    return round(statistics.fmean(known), 1) if known else None


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson's correlation of ``x`` and ``y`` (``None`` for fewer than 3 points or no spread)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return statistics.correlation(x, y)


def summary(runs: list[dict], order: list[str] | None = None) -> dict:
    """The study's statistics over ``runs`` (records of ``run``) of one split and one length each.

    Returns:
        ``{"recipes": [...], "per_seed": [...], "pooled": [...], "val_vs_dev": {...}}``: per recipe its
        seeds and the mean / sd of val_acc and dev_acc; per seed and pair of recipes McNemar and the
        paired bootstrap; the same pooled over the seeds both ran; val_acc - dev_acc per run, its mean,
        and Pearson's r of val_acc and dev_acc over the runs.
    """
    names = [n for n in (order or []) if any(r["recipe"] == n for r in runs)]
    names += [n for n in dict.fromkeys(r["recipe"] for r in runs) if n not in names]
    by = {n: {r["seed"]: r for r in runs if r["recipe"] == n} for n in names}
    recipes = []
    for n in names:
        val, dev = mean_sd([r["val_acc"] for r in by[n].values()]), mean_sd([r["dev_acc"] for r in by[n].values()])
        one = next(iter(by[n].values()))
        recipes.append({"recipe": n, "seeds": sorted(by[n]), "trainable_pct": one["trainable_pct"],
                        "val_acc_mean": round(val[0], 4), "val_acc_sd": round(val[1], 4),
                        "dev_acc_mean": round(dev[0], 4), "dev_acc_sd": round(dev[1], 4),
                        "fit_minutes_mean": mean_or_none([r.get("fit_minutes") for r in by[n].values()])})
    per_seed, pooled = [], []
    for a, b in combinations(names, 2):
        seeds = sorted(set(by[a]) & set(by[b]))
        for seed in seeds:
            ra, rb = right(by[a][seed]), right(by[b][seed])
            only_a, only_b, p = mcnemar_p(ra, rb)
            low, high, p_boot = paired_bootstrap(ra, rb, seed=seed)
            per_seed.append({"seed": seed, "a": a, "b": b, "dev_acc_a": by[a][seed]["dev_acc"],
                             "dev_acc_b": by[b][seed]["dev_acc"],
                             "difference": round(by[a][seed]["dev_acc"] - by[b][seed]["dev_acc"], 4),
                             "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": round(p, 4),
                             "bootstrap_95": [round(low, 4), round(high, 4)], "bootstrap_p": round(p_boot, 4)})
        if len(seeds) > 1:
            all_a = [x for s in seeds for x in right(by[a][s])]
            all_b = [x for s in seeds for x in right(by[b][s])]
            only_a, only_b, p = mcnemar_p(all_a, all_b)
            share_a = [statistics.fmean(col) for col in zip(*(right(by[a][s]) for s in seeds))]
            share_b = [statistics.fmean(col) for col in zip(*(right(by[b][s]) for s in seeds))]
            low, high, p_boot = paired_bootstrap(share_a, share_b)
            pooled.append({"seeds": seeds, "a": a, "b": b,
                           "difference": round(statistics.fmean(share_a) - statistics.fmean(share_b), 4),
                           "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": round(p, 4),
                           "bootstrap_95": [round(low, 4), round(high, 4)], "bootstrap_p": round(p_boot, 4)})
    gaps = [{"recipe": r["recipe"], "seed": r["seed"], "val_acc": r["val_acc"], "dev_acc": r["dev_acc"],
             "gap": round(r["val_acc"] - r["dev_acc"], 4)} for r in runs]
    r_val_dev = pearson([r["val_acc"] for r in runs], [r["dev_acc"] for r in runs])
    val_vs_dev = {"runs": gaps, "mean_gap": round(statistics.fmean(g["gap"] for g in gaps), 4) if gaps else None,
                  "mean_abs_gap": round(statistics.fmean(abs(g["gap"]) for g in gaps), 4) if gaps else None,
                  "pearson_r": None if r_val_dev is None else round(r_val_dev, 3)}
    return {"recipes": recipes, "per_seed": per_seed, "pooled": pooled, "val_vs_dev": val_vs_dev}


def print_summary(result: dict) -> None:
    """The tables of ``summary`` as plain text."""
    print(f"{'recipe':16} {'seeds':>10} {'trainable %':>11} {'val_acc':>15} {'GLUE dev':>15} {'min':>6}")
    for r in result["recipes"]:
        print(f"{r['recipe']:16} {','.join(map(str, r['seeds'])):>10} {r['trainable_pct']:>11.3f} "
              f"{r['val_acc_mean']:.4f}±{r['val_acc_sd']:.4f} {r['dev_acc_mean']:.4f}±{r['dev_acc_sd']:.4f} "
              f"{r['fit_minutes_mean'] if r['fit_minutes_mean'] is not None else '-':>6}")
    for t in result["per_seed"] + result["pooled"]:
        seeds = f"seed {t['seed']}" if "seed" in t else f"pooled {','.join(map(str, t['seeds']))}"
        print(f"{seeds}: {t['a']} - {t['b']} = {t['difference']:+.4f} (only {t['a']} right {t['only_a_right']}, "
              f"only {t['b']} right {t['only_b_right']}); McNemar p {t['mcnemar_p']:.3f}; "
              f"bootstrap 95% [{t['bootstrap_95'][0]:+.4f}, {t['bootstrap_95'][1]:+.4f}], p {t['bootstrap_p']:.3f}")
    v = result["val_vs_dev"]
    print(f"val_acc - dev_acc: mean {v['mean_gap']:+.4f}, mean |gap| {v['mean_abs_gap']:.4f}, Pearson r {v['pearson_r']}")


def main(recipes: str = "best,full", seeds: str = "42,43,44", epochs: int | None = None,
         json_path: str = "benchmarks/results/compare.json", log_dir: str = "lightning_logs", extra: str = "",
         run_missing: bool = True) -> dict:
    """Run the (recipe, seed) pairs not yet in ``json_path``, then print the study's tables.

    Args:
        recipes: comma-separated names from ``RECIPES``.
        seeds: comma-separated ``seed_everything`` values.
        epochs: override the recipes' ``max_epochs`` (``None``: each recipe's own, 3 unless it says).
        json_path: results file, read first and rewritten after every run; its ``summaries`` keep, per
            ``"epochs=<epochs> recipes=<recipes>"``, the statistics of those recipes' runs on ``seeds``.
        log_dir: TensorBoard / checkpoint folder; runs go to ``<log_dir>/compare/<recipe>-seed<seed>-<time>``.
        extra: more ``fit`` arguments for every run.
        run_missing: ``false``: run nothing, only print the tables of what is in ``json_path``.

    Returns:
        The file's content, plus ``"summary"``: this call's statistics (``summary``).

    Raises:
        ValueError: an unknown recipe.
    """
    wanted = recipes.split(",")
    for name in wanted:
        if name not in RECIPES:
            raise ValueError(f"--recipes: unknown recipe {name!r}: expected one of {', '.join(RECIPES)}")
    seed_list = [int(s) for s in seeds.split(",")]
    path = Path(json_path)
    results = json.loads(path.read_text()) if path.exists() else {"runs": []}

    def mine(r: dict) -> bool:
        return r["recipe"] in wanted and r["seed"] in seed_list and (epochs is None or r["epochs"] == epochs) \
            and r.get("split", "random") == "by_sentence"

    for recipe in wanted:
        for seed in seed_list:
            if any(mine(r) and r["recipe"] == recipe and r["seed"] == seed for r in results["runs"]):
                print(f"compare: {recipe} seed {seed} already in {path}, skipped")
                continue
            if not run_missing:
                continue
            results["runs"].append(run(recipe, seed, epochs, log_dir, shlex.split(extra)))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
    result = summary([r for r in results["runs"] if mine(r)], order=wanted)
    print_summary(result)
    results.pop("summary", None)
    results.setdefault("summaries", {})[f"epochs={epochs} recipes={recipes}"] = result
    if path.exists():
        path.write_text(json.dumps(results, indent=1) + "\n")
    return {**results, "summary": result}


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
