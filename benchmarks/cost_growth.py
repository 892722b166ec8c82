"""How the cost of training and evaluation grows with the work: batch, length, rank, adapted Linears.

    python -m benchmarks.cost_growth                           # every axis (~9-10 min on 2 CPU cores, estimated)
    python -m benchmarks.cost_growth --axes batch,eval         # some axes
    python -m benchmarks.cost_growth --model /path/to/folder --quick true --json /tmp/c.json --png /tmp/c.png

No data set: every point runs on synthetic batches of one fixed shape, ``input_ids`` seeded random
ids from the tokenizer's vocabulary, ``attention_mask`` all ones, ``token_type_ids`` zeros, labels
random 0/1, so every token is real and tokens/s = batch x length / seconds per step.

Training point: one optimizer step (forward, cross-entropy, backward, AdamW lr 1e-3) of
``LoRAClassifier(model, r=r, target_modules=targets).model``, the transformers model with this
package's LoRA in it and LoRA + head trainable as the package sets them, in train mode (its dropouts
on, as in ``fit``). Evaluation point: the forward pass in eval mode under ``torch.inference_mode()``
(LoRA unmerged). Each axis varies one thing from the base point (batch 32, length 64, r 4,
query+value):

- ``batch``   8 .. 256 (training, length 64);
- ``length``  16 .. 512 tokens (training, batch 32);
- ``rank``    r = 1 .. 64;
- ``targets`` 1, 2, 3, 4, 6 adapted Linears per layer (``output.dense`` matches both the attention
  output and the FFN output: ``lora.matches_target``'s suffix rule);
- ``eval``    batch 8 .. 256 at length 64.

Each point runs in its own spawned process (peak RSS is that point's own; ``BENCH_THREADS`` sets its
thread count, the same for all); a point shared by several axes (the base point) is measured once.
Per point: ``warmup`` steps, then the median of ``steps`` (``eval_steps``) per-step times. A point that
runs out of memory is skipped with a note. Prints a table per axis (with the achieved GFLOP/s from
``step_flops``); writes benchmarks/results/cost_growth.json and docs/cost-growth.png.
"""

from __future__ import annotations

import json as jsonlib
import math
import multiprocessing as mp
import os
import platform
import queue as queuelib
import shlex
import statistics
import time
from pathlib import Path

import torch

from benchmarks.train_throughput import _cpu_model, child, peak_rss_mib

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
RESULTS = Path(__file__).parent / "results" / "cost_growth.json"
PNG = Path(__file__).parents[1] / "docs" / "cost-growth.png"
AXES = ("batch", "length", "rank", "targets", "eval")
# "output.dense" is the attention output's and the FFN output's (both end with ".output.dense"), not the pooler's
TARGET_SETS = ["query", "query+value", "query+key+value", "query+key+value+attention.output.dense",
               "query+key+value+output.dense+intermediate.dense"]
FULL = {"batch": [8, 16, 32, 64, 128, 256], "length": [16, 32, 64, 128, 256, 512], "rank": [1, 2, 4, 8, 16, 32, 64],
        "targets": TARGET_SETS, "eval": [8, 16, 32, 64, 128, 256],
        "base": {"batch": 32, "length": 64, "r": 4, "targets": "query+value"}}
QUICK = {"batch": [2, 4], "length": [8, 16], "rank": [1, 2], "targets": ["query", "query+value"], "eval": [2, 4],
         "base": {"batch": 2, "length": 8, "r": 2, "targets": "query+value"}}


def step_flops(config, batch: int, length: int, r: int, lora_features: list[tuple[int, int]], train: bool = True) -> float:
    """FLOPs of one step on a ``(batch, length)`` batch of real tokens, counted as ``run_limit`` in
    train_throughput.py counts them per token (a multiply-add, MAC, is 2 FLOPs).

    Per token and layer the forward pass costs the six Linears' MACs, ``4 d^2 + 2 d f`` (q, k, v, attention
    output; FFN in and out), and attention's, ``2 T d`` (``QK^T`` and ``AV``). Training doubles that for the
    activation gradients (every layer sits above layer 0's first adapter; the frozen base has no weight
    gradients) and adds LoRA's own: per adapted Linear ``(in, out)``, ``r (in + out)`` MACs forward and twice
    that backward (the ``A``/``B`` gradients and the input gradient). Evaluation: the forward pass and LoRA's
    forward. Left out: embeddings, LayerNorm, softmax, GELU, dropout (O(d) or O(T) per token), pooler, head
    and optimizer (per sample or per parameter).

    Args:
        config: the model's transformers config (``hidden_size``, ``intermediate_size``, ``num_hidden_layers``).
        batch: sentences per step.
        length: tokens per sentence (all real).
        r: LoRA rank.
        lora_features: ``(in_features, out_features)`` of every adapted Linear in the model.
        train: a training step (forward + backward) rather than a forward pass.

    Returns:
        FLOPs per step (a float).
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    f = getattr(config, "intermediate_size", None) or config.hidden_dim  # BERT-like; DistilBERT's hidden_dim
    forward = 2 * layers * (4 * d * d + 2 * d * f + 2 * length * d)   # per token
    lora = sum(2 * r * (i + o) for i, o in lora_features) * (3 if train else 1)  # per token
    return batch * length * ((2 if train else 1) * forward + lora)


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CPU: ``DefaultCPUAllocator: can't allocate memory``)."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error)


def measure(model: str, kind: str, batch: int, length: int, r: int, targets: list[str], steps: int, warmup: int,
            seed: int = 0) -> dict:
    """Time ``warmup + steps`` steps of one point (``kind``: ``"train"`` or ``"eval"``) in this process.

    Returns:
        the point's numbers (``ms_per_step`` is the median over ``steps``), or ``{"skipped": why}`` when
        it ran out of memory.
    """
    try:
        return _measure(model, kind, batch, length, r, targets, steps, warmup, seed)
    except (RuntimeError, MemoryError) as error:
        if not out_of_memory(error):
            raise
        return {"skipped": f"out of memory ({str(error).splitlines()[0][:120]})"}


def _measure(model: str, kind: str, batch: int, length: int, r: int, targets: list[str], steps: int, warmup: int,
             seed: int) -> dict:
    from lora_lightning.hub import load_tokenizer
    from lora_lightning.lora import count_parameters
    from lora_lightning.model import LoRAClassifier
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per point
    torch.manual_seed(seed)
    module = LoRAClassifier(model, r=r, target_modules=list(targets))
    trainable, total = count_parameters(module.model)
    vocab = min(len(load_tokenizer(model)), module.model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    inputs = {"input_ids": torch.randint(vocab, (batch, length), generator=g),
              "attention_mask": torch.ones(batch, length, dtype=torch.long),
              "token_type_ids": torch.zeros(batch, length, dtype=torch.long)}
    labels = torch.randint(2, (batch,), generator=g)
    if kind == "train":
        module.train()
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)

        def step():
            module.loss_fn(module(**inputs), labels).backward()  # module(...) is module.model(...).logits
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        module.eval()

        def step():
            with torch.inference_mode():
                module(**inputs)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    features = [(m.in_features, m.out_features) for m in (module.model.get_submodule(n) for n in module.lora_modules)]
    flops = step_flops(module.model.config, batch, length, r, features, train=kind == "train")
    return {"samples_per_s": batch / seconds, "tokens_per_s": batch * length / seconds, "ms_per_step": 1000 * seconds,
            "gflop_per_step": flops / 1e9, "gflops": flops / seconds / 1e9, "peak_rss_mib": peak_rss_mib(),
            "trainable_params": trainable, "total_params": total, "adapted_linears": len(module.lora_modules),
            "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
            "step_ms_all": [round(1000 * t, 3) for t in times]}


def isolated_point(fn, *args) -> dict:
    """``train_throughput.isolated`` (the same ``child``: a fresh spawned process, ``BENCH_THREADS``
    threads), except that a child that dies without an answer (``-9``: the kernel's OOM killer) gives
    ``{"skipped": why}`` instead of waiting for ever; a child that failed otherwise raises."""
    ctx = mp.get_context("spawn")
    answers = ctx.Queue()
    proc = ctx.Process(target=child, args=(answers, fn, args))
    proc.start()
    result = None
    while result is None:
        try:
            result = answers.get(timeout=1.0)
        except queuelib.Empty:
            if proc.is_alive():
                continue
            try:
                result = answers.get(timeout=1.0)  # what it put just before it exited
            except queuelib.Empty:
                proc.join()
                if proc.exitcode == -9:
                    result = {"skipped": "its process was killed (signal 9: the kernel's OOM killer, most likely)"}
                else:
                    raise RuntimeError(f"the point's process failed (exit code {proc.exitcode}): see its "
                                       "traceback above") from None
    proc.join()
    return result


def points(axes: list[str], values: dict, base: dict) -> list[tuple[str, object, tuple]]:
    """``(axis, value, point)`` per axis value; a point is ``(kind, batch, length, r, targets)``."""
    out = []
    for axis in axes:
        for v in values[axis]:
            b, t, r, targets = base["batch"], base["length"], base["r"], base["targets"]
            kind = "eval" if axis == "eval" else "train"
            if axis in ("batch", "eval"):
                b = v
            elif axis == "length":
                t = v
            elif axis == "rank":
                r = v
            elif axis == "targets":
                targets = v
            out.append((axis, v, (kind, b, t, r, targets)))
    return out


def print_tables(rows: list[dict], threads) -> None:
    """One table per axis: the value, then the point's numbers (or its skip note)."""
    for axis in dict.fromkeys(r["axis"] for r in rows):
        here = [r for r in rows if r["axis"] == axis]
        w = max(7, *(len(str(r["value"])) for r in here))
        print(f"\n{axis} ({'forward, inference_mode' if axis == 'eval' else 'training step'}; {threads} thread(s))")
        print(f"{'value':>{w}} {'samples/s':>10} {'tokens/s':>10} {'ms/step':>9} {'GFLOP/s':>8} {'peak RSS MiB':>13} "
              f"{'trainable':>10} {'LoRA Linears':>12}")
        for r in here:
            if "skipped" in r:
                print(f"{r['value']!s:>{w}}  skipped: {r['skipped']}")
                continue
            print(f"{r['value']!s:>{w}} {r['samples_per_s']:>10.1f} {r['tokens_per_s']:>10.0f} {r['ms_per_step']:>9.1f} "
                  f"{r['gflops']:>8.1f} {r['peak_rss_mib']:>13.0f} {r['trainable_params']:>10,} {r['adapted_linears']:>12}")


def plot(result: dict, png: Path) -> None:
    """One panel per axis: tokens/s (left) and peak RSS (right) against the axis value (log2 x but targets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, meta = result["rows"], result["meta"]
    axes = list(dict.fromkeys(r["axis"] for r in rows))
    ncols = min(3, len(axes))
    nrows = math.ceil(len(axes) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    base = meta["base"]
    xlabels = {"batch": "batch size (length {length})", "length": "tokens per sentence (batch {batch})",
               "rank": "LoRA rank r", "targets": "adapted Linears in the model",
               "eval": "batch size (eval forward, length {length})"}
    for ax, axis in zip(grid.flat, axes):
        done = [r for r in rows if r["axis"] == axis and "skipped" not in r]
        x = [r["adapted_linears"] if axis == "targets" else r["value"] for r in done]
        ax.plot(x, [r["tokens_per_s"] for r in done], "o-", color="tab:blue")
        ax.set_ylabel("tokens/s", color="tab:blue")
        ax.set_ylim(0, 1.15 * max([r["tokens_per_s"] for r in done], default=1))  # room for the GFLOP/s labels
        rss = ax.twinx()
        rss.plot(x, [r["peak_rss_mib"] for r in done], "s--", color="tab:orange")
        rss.set_ylabel("peak RSS (MiB)", color="tab:orange")
        rss.set_ylim(0, 1.15 * max([r["peak_rss_mib"] for r in done], default=1))
        if axis == "targets":
            ax.set_xticks(x, [f"{n}\n{r['value'].replace('query', 'q').replace('key', 'k').replace('value', 'v')}"
                              .replace("attention.output.dense", "attn.out").replace("intermediate.dense", "ffn.in")
                              .replace("output.dense", "out.dense") for n, r in zip(x, done)], fontsize=7)
        elif x:
            ax.set_xscale("log", base=2)
            ax.set_xticks(x, [str(v) for v in x])
        for r, xi in zip(done, x):  # achieved GFLOP/s beside each point
            ax.annotate(f"{r['gflops']:.3g}", (xi, r["tokens_per_s"]), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=7, color="tab:blue")
        ax.set_xlabel(xlabels[axis].format(**base))
        ax.set_title(f"{axis} ({'forward' if axis == 'eval' else 'training step'})", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(grid.flat)[len(axes):]:
        ax.set_axis_off()
    name = Path(meta["model"]).name if os.path.isdir(meta["model"]) else meta["model"]
    fig.suptitle(f"LoRA cost growth, {name}: one CPU machine ({meta['cpu']}, {meta['cores']} cores), "
                 f"{meta['threads']} thread(s), torch {meta['torch']}\nbase point batch {base['batch']}, length "
                 f"{base['length']}, r {base['r']}, {base['targets']}; numbers over points: achieved GFLOP/s", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(model: str = MODEL, axes: str = ",".join(AXES), steps: int = 5, eval_steps: int = 10, warmup: int = 2,
         quick: bool = False, batch_sizes: list[int] | None = None, lengths: list[int] | None = None,
         ranks: list[int] | None = None, target_sets: list[str] | None = None, eval_batch_sizes: list[int] | None = None,
         base_batch: int | None = None, base_length: int | None = None, base_r: int | None = None,
         base_targets: str | None = None, isolate: bool = True, json: str = str(RESULTS), png: str = str(PNG),
         seed: int = 0) -> dict:
    """Measure every point of the chosen axes; print a table per axis; write ``json`` and ``png``.

    Args:
        model: Hub id or local folder (the packaged MiniLM-L6 by default, resolved as the model resolves it).
        axes: comma-separated, of ``batch``, ``length``, ``rank``, ``targets``, ``eval``.
        steps: timed training steps per point (median reported), after ``warmup``.
        eval_steps: timed forward passes per eval point (median reported), after ``warmup``.
        warmup: untimed steps first (the first AdamW step allocates its state).
        quick: tiny axes (batch 2, 4; length 8, 16; rank 1, 2; query / query+value; eval 2, 4; base
            batch 2, length 8, r 2, query+value) for a smoke test on a tiny model; the options below override them.
        batch_sizes: the batch axis (default 8 .. 256).
        lengths: the length axis, tokens per sentence (default 16 .. 512).
        ranks: the rank axis (default 1 .. 64).
        target_sets: the targets axis, each a ``+``-joined ``target_modules`` list (default: query, query+value,
            query+key+value, + attention.output.dense, + output.dense + intermediate.dense).
        eval_batch_sizes: the eval axis (default 8 .. 256).
        base_batch, base_length, base_r, base_targets: the base point the axes vary from (32, 64, 4, query+value).
        isolate: one spawned process per point (its own peak RSS); ``false`` measures in this process.
        json: results file.
        png: the figure.
        seed: seed of the synthetic batches and of the LoRA / head init.

    Raises:
        ValueError: an unknown axis, or a length beyond the model's ``max_position_embeddings``.
    """
    from transformers import AutoConfig

    from lora_lightning.hub import resolve_model_path

    chosen = [a.strip() for a in axes.split(",") if a.strip()]
    unknown = [a for a in chosen if a not in AXES]
    if unknown:
        raise ValueError(f"unknown axes {unknown}: expected some of {', '.join(AXES)}")
    preset = QUICK if quick else FULL
    given = {"batch": batch_sizes, "length": lengths, "rank": ranks, "targets": target_sets, "eval": eval_batch_sizes}
    values = {a: list(given[a]) if given[a] is not None else preset[a] for a in AXES}
    base = {k: v if v is not None else preset["base"][k]
            for k, v in (("batch", base_batch), ("length", base_length), ("r", base_r), ("targets", base_targets))}
    limit = getattr(AutoConfig.from_pretrained(resolve_model_path(model)), "max_position_embeddings", None)
    longest = max(values["length"] if "length" in chosen else [base["length"]])
    if limit is not None and longest > limit:
        raise ValueError(f"length {longest} is beyond {model}'s max_position_embeddings ({limit})")

    measured: dict[tuple, dict] = {}
    rows = []
    started = time.perf_counter()
    for axis, value, point in points(chosen, values, base):
        if point not in measured:
            kind, b, t, r, targets = point
            args = (model, kind, b, t, r, targets.split("+"), eval_steps if kind == "eval" else steps, warmup, seed)
            measured[point] = isolated_point(measure, *args) if isolate else measure(*args)
            note = measured[point].get("skipped")
            print(f"{axis} {value}: " + (f"skipped, {note}" if note else f"{measured[point]['ms_per_step']:.1f} ms/step"),
                  flush=True)
        kind, b, t, r, targets = point
        rows.append({"axis": axis, "value": value, "kind": kind, "batch": b, "length": t, "r": r, "targets": targets,
                     **measured[point]})
    threads = sorted({r["threads"] for r in rows if "threads" in r})
    threads = threads[0] if len(threads) == 1 else (threads or None)  # None: every point skipped
    print_tables(rows, threads)

    command = (f"python -m benchmarks.cost_growth --axes {','.join(chosen)} --steps {steps} --eval_steps {eval_steps} "
               f"--warmup {warmup}")
    command += "" if model == MODEL else f" --model {shlex.quote(model)}"
    command += " --quick true" if quick else ""
    for name, v in (("batch_sizes", batch_sizes), ("lengths", lengths), ("ranks", ranks), ("target_sets", target_sets),
                    ("eval_batch_sizes", eval_batch_sizes), ("base_batch", base_batch), ("base_length", base_length),
                    ("base_r", base_r), ("base_targets", base_targets)):
        if v is not None:
            command += f" --{name} {shlex.quote(jsonlib.dumps(v) if isinstance(v, list) else str(v))}"
    meta = {"command": command, "model": model, "threads": threads, "cores": os.cpu_count(), "cpu": _cpu_model(),
            "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "isolated": isolate, "base": base, "wall_s": round(time.perf_counter() - started, 1)}
    result = {"meta": meta, "rows": rows}
    json_path, png_path = Path(json), Path(png)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(jsonlib.dumps(result, indent=2) + "\n")
    plot(result, png_path)
    print(f"\nwrote {json_path} and {png_path} ({meta['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
