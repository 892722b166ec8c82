"""The parameter-efficiency sweep: trainable parameters vs GLUE dev accuracy on SST-2.

    python -m benchmarks.sweep                       # every row (64 min on 2 CPU cores, 2026-11-29)
    python -m benchmarks.sweep --rows lr             # only the learning-rate check
    python -m benchmarks.sweep --rows r1,r8-all      # named rows

Each row is ``fit`` of ``configs/sst2.yaml`` with its overrides, for ``--epochs`` epochs (1 by
default), then ``test`` on GLUE dev with the best checkpoint (by ``val_acc``). Rows are run in
the order below and appended to ``--csv`` as they finish; a row already in the CSV is not run
again, so an interrupted sweep picks up where it stopped.

1. The learning-rate check: 3e-4, 1e-3, 3e-3 at r=4 on query+value.
2. The rank sweep at the learning rate with the best ``val_acc`` (chosen on val, never on dev):
   r in {1, 2, 4, 8, 16} on query+value with ``lora_alpha`` fixed at 16 (Hu et al. 2021 set
   alpha once and do not retune it per r), and r=8 on every attention and feed-forward Linear.
3. Full fine-tuning of the same model (``--model.finetune full``, lr 5e-5) as the ceiling, and
   its learning-rate check (2e-5, 1e-4): ``--rows full-lr``.
4. The recipe study (issue 11, ``--rows variants``): plain / rsLoRA / DoRA / LoRA+ at r=4 on
   query+value and at r=4 and r=8 on all Linears, backbone dropout 0, ``train_pooler``, at the lr
   check's winner; and an lr check (5e-4, 2e-3) for the two variants that change the effective step
   (rsLoRA, LoRA+): ``--rows variant-lr``.

Then the plot (``--png``): x = trainable parameters (log), y = GLUE dev accuracy. It needs
matplotlib (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import csv
import platform
import shlex
import time
from datetime import date
from pathlib import Path

import torch

from lora_lightning.cli import cli_main
from lora_lightning.lora import count_parameters

LEARNING_RATES = {"lr3e-4": 3e-4, "lr1e-3": 1e-3, "lr3e-3": 3e-3}
ALL_LINEARS = ["query", "key", "value", "output.dense", "intermediate.dense"]  # not the pooler's dense
FULL_FINETUNE_LR = 5e-5
FIELDS = ["row", "finetune", "variant", "r", "lora_alpha", "target_modules", "learning_rate", "epochs",
          "trainable_params", "total_params", "trainable_pct", "val_acc", "dev_acc", "dev_f1", "dev_n",
          "fit_minutes", "machine", "date", "command"]


def row_options(row: str, best_lr: float | None) -> dict:
    """The model options of one sweep row (``best_lr``: the lr check's winner, for the rank rows)."""
    if row in LEARNING_RATES:
        return {"r": 4, "learning_rate": LEARNING_RATES[row]}
    if row == "full":
        return {"finetune": "full", "learning_rate": FULL_FINETUNE_LR}
    if row in FULL_LR_ROWS:
        return {"finetune": "full", "learning_rate": FULL_LR_ROWS[row]}
    if row in VARIANT_LR_ROWS:
        return {"r": 4, **VARIANT_LR_ROWS[row]}
    if best_lr is None:
        raise ValueError(f"row {row!r} needs the whole learning-rate check first: run --rows lr")
    if row in VARIANT_ROWS:
        return {"r": 4, "learning_rate": best_lr, **VARIANT_ROWS[row]}
    if row in LEVER_ROWS:
        return {"r": 4, "learning_rate": best_lr, **LEVER_ROWS[row]}
    if row == "r8-all":
        return {"r": 8, "target_modules": ALL_LINEARS, "learning_rate": best_lr}
    if row.startswith("r") and row[1:].isdigit():
        return {"r": int(row[1:]), "learning_rate": best_lr}
    raise ValueError(f"unknown sweep row {row!r}: expected {', '.join(ROWS)}")


# issue 11's recipe study: each row's options on top of r=4 / query+value at the lr check's winner
RSLORA, DORA, LORAPLUS = {"use_rslora": True}, {"use_dora": True}, {"loraplus_lr_ratio": 16.0}  # Hayou et al.'s 16
VARIANT_ROWS = {
    "rslora-r4": RSLORA, "dora-r4": DORA, "loraplus-r4": LORAPLUS,
    "r4-all": {"target_modules": ALL_LINEARS},
    "rslora-r4-all": {"target_modules": ALL_LINEARS, **RSLORA}, "dora-r4-all": {"target_modules": ALL_LINEARS, **DORA},
    "loraplus-r4-all": {"target_modules": ALL_LINEARS, **LORAPLUS},
    "rslora-r8-all": {"r": 8, "target_modules": ALL_LINEARS, **RSLORA},
    "dora-r8-all": {"r": 8, "target_modules": ALL_LINEARS, **DORA},
    "loraplus-r8-all": {"r": 8, "target_modules": ALL_LINEARS, **LORAPLUS},
    "dropout0-r4": {"backbone_dropout": 0.0}, "pooler-r4": {"train_pooler": True},
    "dropout0-r4-all": {"target_modules": ALL_LINEARS, "backbone_dropout": 0.0},
}
VARIANT_LR_ROWS = {f"{name}-lr{lr}": {**options, "learning_rate": float(lr)}
                   for name, options, lrs in (("rslora-r4", RSLORA, ("5e-4", "2e-3")),
                                              # at 1e-3 LoRA+'s B steps at 1.6e-2 and val_acc fell to 0.812: look lower
                                              ("loraplus-r4", LORAPLUS, ("5e-4", "2e-3", "2e-4", "1e-4")))
                   for lr in lrs}
FULL_LR_ROWS = {"full-lr2e-5": 2e-5, "full-lr1e-4": 1e-4}
# issue 13's levers that change the batches or the numbers, at r=4 on query+value ("data." keys are data options)
# (sorted is the default since then: sorted-r4 is today's default, megabatch-r4 the grouping before it)
LEVER_ROWS = {"sorted-r4": {"data.length_grouping": "sorted"}, "megabatch-r4": {"data.length_grouping": "megabatch"},
              "loradropout0-r4": {"lora_dropout": 0.0},
              "sorted-dropout0-r4": {"data.length_grouping": "sorted", "backbone_dropout": 0.0}}
GROUPS = {"lr": list(LEARNING_RATES), "variants": list(VARIANT_ROWS), "variant-lr": list(VARIANT_LR_ROWS),
          "full-lr": list(FULL_LR_ROWS), "levers": list(LEVER_ROWS)}
ROWS = [*LEARNING_RATES, "r1", "r2", "r4", "r8", "r16", "r8-all", "full", *FULL_LR_ROWS, *VARIANT_ROWS, *VARIANT_LR_ROWS,
        *LEVER_ROWS]


def cli_args(options: dict, epochs: int, log_dir: str, version: str, config: str, extra: list[str]) -> list[str]:
    """Command-line arguments for ``fit`` of one row."""
    args = ["fit", "--config", config, "--trainer.max_epochs", str(epochs),
            "--trainer.logger.init_args.save_dir", log_dir, "--trainer.logger.init_args.name", "sweep",
            "--trainer.logger.init_args.version", version]
    for key, value in options.items():
        option = key if key.startswith("data.") else f"model.{key}"
        args += [f"--{option}", f"[{','.join(value)}]" if isinstance(value, list) else str(value)]
    return args + list(extra)


def run_row(row: str, options: dict, epochs: int, log_dir: str, config: str, extra: list[str]) -> dict:
    """Fit one row, test its best checkpoint on GLUE dev, return its CSV record."""
    version = f"{row}-{time.strftime('%Y%m%d-%H%M%S')}"
    args = cli_args(options, epochs, log_dir, version, config, extra)
    start = time.perf_counter()
    cli = cli_main(args)
    minutes = (time.perf_counter() - start) / 60
    best = cli.trainer.checkpoint_callback
    (result,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    trainable, total = count_parameters(cli.model.model)
    hp = cli.model.hparams
    lora = hp.finetune == "lora"
    return {
        "row": row, "finetune": hp.finetune, "variant": variant_name(hp, cli.datamodule.hparams),
        "r": hp.r if lora else "", "lora_alpha": hp.lora_alpha if lora else "",
        "target_modules": "+".join(hp.target_modules) if lora else "all weights",
        "learning_rate": hp.learning_rate, "epochs": epochs, "trainable_params": trainable,
        "total_params": total, "trainable_pct": round(100 * trainable / total, 4),
        "val_acc": round(float(best.best_model_score), 4), "dev_acc": round(result["test_acc"], 4),
        "dev_f1": round(result["test_f1"], 4), "dev_n": len(cli.datamodule.datasets["test"]),
        "fit_minutes": round(minutes, 1),
        "machine": f"{torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "command": "python -m lora_lightning " + shlex.join(args),
    }


def variant_name(hp, data_hp=None) -> str:
    """What a row changes besides r, targets and lr: ``plain``, or e.g. ``dora``, ``loraplus16``, ``dropout0``,
    ``loradropout0``, ``megabatch`` (``data.length_grouping`` other than the default ``sorted``)."""
    parts = [name for name in ("rslora", "dora") if hp.get(f"use_{name}")]
    if hp.get("loraplus_lr_ratio"):
        parts.append(f"loraplus{hp['loraplus_lr_ratio']:g}")
    if hp.get("backbone_dropout") is not None:
        parts.append(f"dropout{hp['backbone_dropout']:g}")
    if hp.get("train_pooler"):
        parts.append("pooler")
    if hp.get("finetune", "lora") == "lora" and hp.get("lora_dropout") not in (None, 0.1):
        parts.append(f"loradropout{hp['lora_dropout']:g}")
    if (data_hp or {}).get("length_grouping", "sorted") != "sorted":
        parts.append(data_hp["length_grouping"])
    return "+".join(parts) or "plain"


def read_csv(path: Path) -> list[dict]:
    """The rows already measured (empty when the file does not exist). A file written before a column
    existed is rewritten once with today's columns (the new ones empty, ``variant`` as ``plain``)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        records, header = list(reader), reader.fieldnames
    if header != FIELDS:
        records = [{**{k: "" for k in FIELDS}, "variant": "plain", **r} for r in records]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(records)
    return records


def best_learning_rate(records: list[dict]) -> float | None:
    """The lr check's learning rate with the highest ``val_acc`` (``None`` until all its rows ran)."""
    checked = [r for r in records if r["row"] in LEARNING_RATES]
    if len(checked) < len(LEARNING_RATES):
        return None
    return float(max(checked, key=lambda r: float(r["val_acc"]))["learning_rate"])


def standard_error(record: dict) -> float:
    """Binomial standard error of a dev accuracy: sqrt(p (1 - p) / dev_n), about 0.011 at p = 0.87, n = 872."""
    p = float(record["dev_acc"])
    return (p * (1 - p) / int(record["dev_n"])) ** 0.5


def plot(records: list[dict], png: Path) -> None:
    """Trainable parameters (log x) vs GLUE dev accuracy: the rank rows as a line, the rest as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_row = {r["row"]: r for r in records}
    line = [by_row[k] for k in ("r1", "r2", "r4", "r8", "r16") if k in by_row]
    if line:
        ax.errorbar([int(r["trainable_params"]) for r in line], [float(r["dev_acc"]) for r in line],
                    yerr=[standard_error(r) for r in line], fmt="o-", capsize=3, label="LoRA on query+value, r = 1..16")
    for key, style, label in (("r8-all", "s", "LoRA r=8 on all attention + FFN Linears"),
                              ("full", "*", "full fine-tuning")):
        if key in by_row:
            r = by_row[key]
            ax.errorbar(int(r["trainable_params"]), float(r["dev_acc"]), yerr=standard_error(r), fmt=style,
                        markersize=10, capsize=3, label=label)
    best_lr = best_learning_rate(records)
    lr_rows = [r for r in records if r["row"] in LEARNING_RATES
               and not ("r4" in by_row and float(r["learning_rate"]) == best_lr)]  # r4 is that run
    if lr_rows:
        ax.errorbar([int(r["trainable_params"]) for r in lr_rows], [float(r["dev_acc"]) for r in lr_rows],
                    yerr=[standard_error(r) for r in lr_rows], fmt="x", color="grey", capsize=3,
                    label="lr check, r=4 on query+value")
    # the recipe study: each variant at its own lr check's winner (by val_acc); the other lr rows stay in the CSV
    study = [r for r in records if r["row"] in FULL_LR_ROWS or (r["row"] in VARIANT_ROWS and r["row"] not in ("rslora-r4", "loraplus-r4"))]
    for family in ("rslora-r4", "loraplus-r4"):
        tried = [r for r in records if r["row"] == family or (r["row"].startswith(family + "-lr") and r["row"] in VARIANT_LR_ROWS)]
        if tried:
            study.append(max(tried, key=lambda r: float(r["val_acc"])))
    for marker, label, keep in (("D", "DoRA", "dora"), ("^", "rsLoRA", "rslora"), ("v", "LoRA+", "loraplus"),
                                ("o", "other options", None), ("*", None, "full-lr")):
        chosen = [r for r in study if (keep == "full-lr" and r["row"] in FULL_LR_ROWS) or (keep is None and
                  r["row"] in ("r4-all", "dropout0-r4", "pooler-r4", "dropout0-r4-all")) or (keep not in (None, "full-lr") and r["row"].startswith(keep))]
        if chosen:
            ax.errorbar([int(r["trainable_params"]) for r in chosen], [float(r["dev_acc"]) for r in chosen],
                        yerr=[standard_error(r) for r in chosen], fmt=marker, capsize=3, alpha=0.8,
                        label=f"{label or 'full fine-tuning, other lr'}: {', '.join(r['row'] for r in chosen)}")
    for r in [*line, *lr_rows, *(by_row[k] for k in ("r8-all", "full") if k in by_row)]:  # the study: by marker
        left = r in lr_rows  # the lr rows share r4's x: label them on the other side
        ax.annotate(r["row"], (int(r["trainable_params"]), float(r["dev_acc"])), textcoords="offset points",
                    xytext=(-6, -3) if left else (4, -12), ha="right" if left else "left", fontsize=8)
    epochs = sorted({str(r["epochs"]) for r in records})
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    sizes = "/".join(sorted({str(r["dev_n"]) for r in records}))
    ax.set_ylabel(f"GLUE SST-2 dev accuracy ({sizes} sentences)")
    ax.set_title(f"all-MiniLM-L6-v2 on SST-2, {'/'.join(epochs)} epoch{'' if epochs == ['1'] else 's'} per run "
                 f"(bars: ±1 binomial standard error)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(rows: str = "all", epochs: int = 1, csv_path: str = "benchmarks/results/sweep.csv",
         png: str = "docs/sweep.png", log_dir: str = "lightning_logs", config: str = "configs/sst2.yaml",
         extra: str = "") -> list[dict]:
    """Run the rows not yet in ``csv_path``, append each as it finishes, redraw ``png``.

    Args:
        rows: comma-separated row names or groups (``lr``, ``variants``, ``variant-lr``, ``full-lr``,
            ``all``); the rows are ``ROWS`` (rank and variant rows need the lr rows first).
        epochs: epochs per row.
        csv_path: results file, read first (its rows are not run again) and appended to.
        png: the plot to (re)draw.
        log_dir: TensorBoard / checkpoint folder; each row writes ``<log_dir>/sweep/<row>-<time>``.
        config: the recipe that the rows override.
        extra: more ``fit`` arguments for every row, e.g. ``--extra="--trainer.max_steps 50"``.

    Raises:
        ValueError: an unknown row, or a rank row before the learning-rate check.
    """
    wanted = [r for name in rows.split(",") for r in GROUPS.get(name, ROWS if name == "all" else [name])]
    for name in wanted:
        if name not in ROWS:
            raise ValueError(f"unknown sweep row {name!r}: expected one of {', '.join(GROUPS)}, all, {', '.join(ROWS)}")
    path = Path(csv_path)
    records = read_csv(path)
    for row in wanted:
        if any(r["row"] == row for r in records):
            print(f"sweep: {row} already in {path}, skipped")
            continue
        options = row_options(row, best_learning_rate(records))
        same = [r for r in records if r["row"] in LEARNING_RATES and options == row_options(r["row"], None)
                and int(r["epochs"]) == epochs]
        if same:  # e.g. r4 at the lr check's winner: the same run (same seed), not run twice
            record = {**same[0], "row": row}
            print(f"sweep: {row} is the same run as {same[0]['row']}: its result is reused")
        else:
            record = run_row(row, options, epochs, log_dir, config, shlex.split(extra))
        records.append(record)
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(record)
        print(f"sweep: {row}: val_acc {record['val_acc']}, dev_acc {record['dev_acc']}, "
              f"{record['trainable_params']:,} trainable, {record['fit_minutes']} min")
    plot(records, Path(png))
    print(f"{'row':18} {'trainable':>11} {'%':>8} {'lr':>8} {'val_acc':>8} {'dev_acc':>8} {'min':>6}")
    for r in records:
        print(f"{r['row']:18} {int(r['trainable_params']):>11,} {float(r['trainable_pct']):>8.3f} "
              f"{float(r['learning_rate']):>8.0e} {float(r['val_acc']):>8.4f} {float(r['dev_acc']):>8.4f} "
              f"{float(r['fit_minutes']):>6.1f}")
    return records


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
