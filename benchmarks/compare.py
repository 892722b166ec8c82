"""The final comparison (issue 11): whole recipes, 3 epochs, several seeds, paired tests on GLUE dev.

    python -m benchmarks.compare --recipes best,full --seeds 42,43     # 4 runs, ~95 min on 2 CPU cores
    python -m benchmarks.compare --recipes default --seeds 42,43

A recipe is ``configs/sst2.yaml`` plus its own config file (``RECIPES``). Each (recipe, seed) is
``fit`` with ``--seed_everything <seed>`` (initialisation, dropout and batch order; the train/val
split stays ``data.seed``'s), then ``test`` of the best checkpoint (by ``val_acc``) on GLUE dev,
and the dev predictions one by one. Every run is appended to ``--json`` as it finishes, so a run
already there is not repeated.

Then, per seed, each pair of recipes is compared on the same 872 dev sentences:

- McNemar's exact test: of the sentences exactly one recipe gets right, are the two kinds of
  disagreement equally likely (two-sided binomial p on the discordant pairs)?
- a paired bootstrap (10,000 resamples of the dev sentences, seeded): the 95% interval of the
  accuracy difference.

The choice of recipe is made on ``val_acc`` (the sweep, ``benchmarks/sweep.py``); dev is only reported.
"""

from __future__ import annotations

import json
import math
import platform
import shlex
import time
from datetime import date
from itertools import combinations
from pathlib import Path

import torch

from lora_lightning.cli import cli_main
from lora_lightning.lora import count_parameters

RECIPES = {
    "default": [],                                       # r=4 on query+value (the seed's recipe)
    "best": ["--config", "configs/sst2-best.yaml"],     # the sweep's winner under 1% trainable
    "full": ["--config", "configs/sst2-full.yaml"],     # full fine-tuning
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


def paired_bootstrap(a_right: list[bool], b_right: list[bool], samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap of the accuracy difference A - B over the same sentences.

    Returns:
        ``(low, high, p)``: the 2.5 and 97.5 percentiles of the resampled difference, and the
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
def dev_predictions(model, datamodule) -> list[int]:
    """Predicted class of every GLUE dev sentence, in ``dev.tsv``'s order."""
    loader = datamodule.test_dataloader()
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
    preds = dev_predictions(cli.model, cli.datamodule)
    labels = [int(x) for x in cli.datamodule.datasets["test"]["labels"]]
    trainable, total = count_parameters(cli.model.model)
    return {
        "recipe": recipe, "seed": seed, "finetune": cli.model.hparams.finetune,
        "epochs": cli.trainer.max_epochs, "learning_rate": cli.model.hparams.learning_rate,
        "options": {k: cli.model.hparams.get(k) for k in ("r", "lora_alpha", "target_modules", "backbone_dropout",
                                                          "lora_dropout", "use_rslora", "use_dora", "loraplus_lr_ratio")},
        "trainable_params": trainable, "total_params": total, "trainable_pct": round(100 * trainable / total, 4),
        "val_acc": round(float(best.best_model_score), 4), "val_acc_curve": val_curve(cli.trainer.log_dir),
        "dev_acc": round(result["test_acc"], 4), "dev_f1": round(result["test_f1"], 4),
        "dev_correct": sum(p == y for p, y in zip(preds, labels)), "dev_n": len(labels),
        "fit_minutes": round(minutes, 1), "checkpoint_bytes": Path(best.best_model_path).stat().st_size,
        "machine": f"{torch.get_num_threads()} CPU threads, {platform.machine()}, torch {torch.__version__}",
        "date": date.today().isoformat(), "command": "python -m lora_lightning " + shlex.join(args),
        "dev_predictions": "".join(map(str, preds)), "dev_labels": "".join(map(str, labels)),
    }


def paired_tests(runs: list[dict]) -> list[dict]:
    """McNemar and paired bootstrap for every pair of recipes that ran with the same seed."""
    tests = []
    for seed in sorted({r["seed"] for r in runs}):
        by_recipe = {r["recipe"]: r for r in runs if r["seed"] == seed}
        for a, b in combinations([k for k in RECIPES if k in by_recipe], 2):
            ra, rb = by_recipe[a], by_recipe[b]
            a_right = [p == y for p, y in zip(ra["dev_predictions"], ra["dev_labels"])]
            b_right = [p == y for p, y in zip(rb["dev_predictions"], rb["dev_labels"])]
            only_a, only_b, p_mcnemar = mcnemar_p(a_right, b_right)
            low, high, p_boot = paired_bootstrap(a_right, b_right, seed=seed)
            tests.append({"seed": seed, "a": a, "b": b, "dev_acc_a": ra["dev_acc"], "dev_acc_b": rb["dev_acc"],
                          "difference": round(ra["dev_acc"] - rb["dev_acc"], 4), "only_a_right": only_a,
                          "only_b_right": only_b, "mcnemar_p": round(p_mcnemar, 4),
                          "bootstrap_95": [round(low, 4), round(high, 4)], "bootstrap_p": round(p_boot, 4)})
    return tests


def main(recipes: str = "best,full", seeds: str = "42,43", epochs: int | None = None,
         json_path: str = "benchmarks/results/compare.json", log_dir: str = "lightning_logs", extra: str = "") -> dict:
    """Run the (recipe, seed) pairs not yet in ``json_path``, then the paired tests; print a table.

    Args:
        recipes: comma-separated names from ``RECIPES``.
        seeds: comma-separated ``seed_everything`` values.
        epochs: override the configs' ``max_epochs`` (``None``: the recipe's 3).
        json_path: results file, read first and rewritten after every run.
        log_dir: TensorBoard / checkpoint folder; runs go to ``<log_dir>/compare/<recipe>-seed<seed>-<time>``.
        extra: more ``fit`` arguments for every run.

    Raises:
        ValueError: an unknown recipe.
    """
    wanted = recipes.split(",")
    for name in wanted:
        if name not in RECIPES:
            raise ValueError(f"--recipes: unknown recipe {name!r}: expected one of {', '.join(RECIPES)}")
    path = Path(json_path)
    results = json.loads(path.read_text()) if path.exists() else {"runs": []}
    for recipe in wanted:
        for seed in (int(s) for s in seeds.split(",")):
            if any(r["recipe"] == recipe and r["seed"] == seed for r in results["runs"]):
                print(f"compare: {recipe} seed {seed} already in {path}, skipped")
                continue
            results["runs"].append(run(recipe, seed, epochs, log_dir, shlex.split(extra)))
            results["tests"] = paired_tests(results["runs"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
    results["tests"] = paired_tests(results["runs"])
    print(f"{'recipe':8} {'seed':>4} {'trainable %':>11} {'val_acc':>8} {'dev_acc':>8} {'dev_f1':>7} {'min':>6} {'ckpt MB':>8}")
    for r in results["runs"]:
        print(f"{r['recipe']:8} {r['seed']:>4} {r['trainable_pct']:>11.3f} {r['val_acc']:>8.4f} {r['dev_acc']:>8.4f} "
              f"{r['dev_f1']:>7.4f} {r['fit_minutes']:>6.1f} {r['checkpoint_bytes'] / 1e6:>8.2f}")
    for t in results["tests"]:
        print(f"seed {t['seed']}: {t['a']} - {t['b']} = {t['difference']:+.4f} (only {t['a']} right {t['only_a_right']}, "
              f"only {t['b']} right {t['only_b_right']}); McNemar p {t['mcnemar_p']:.3f}; "
              f"bootstrap 95% [{t['bootstrap_95'][0]:+.4f}, {t['bootstrap_95'][1]:+.4f}], p {t['bootstrap_p']:.3f}")
    return results


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
