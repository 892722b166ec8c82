"""Training-speed levers, one at a time, on this package's loop (same setup as train_throughput).

    GLUE_DIR=../shared/data/glue python -m benchmarks.levers [--n_samples 3200] [--repeats 1] [--rounds 3]

Each row runs in its own process: one warm-up pass over ``n_samples`` training sentences (it also
holds torch.compile's compile time), then ``repeats`` timed passes. The rows run in ``rounds``
interleaved rounds (row 1, row 2, ..., row 1, row 2, ...), so a slow minute of this shared machine
lands on every row alike; samples/s is the median over rounds, with the lowest and highest beside it.
Writes benchmarks/results/levers.json.

The allocator rows preload Debian's jemalloc / tcmalloc (``apt-get install libjemalloc2
libtcmalloc-minimal4``) into that row's process (``LD_PRELOAD``); a row whose library is not installed
is reported as skipped. Levers that change the batches or the numbers (dropout, length grouping)
also need a 1-epoch val_acc against today's: ``python -m benchmarks.sweep --rows levers``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.train_throughput import MODEL, RESULTS, datamodule, isolated, peak_rss_mib, run_package, tokens

ALLOCATORS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
              "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}


def with_env(env: dict, fn, *args):
    """``isolated(fn, *args)`` in a process started with ``env`` added to the environment (read at its start)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return isolated(fn, *args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_torch_dropout(n_samples: int, repeats: int, model_kw: dict, data_kw: dict, name: str) -> dict:
    """``run_package`` with torch's own ``nn.Dropout`` masks (``bernoulli_``), as before dropout.py."""
    from torch import nn

    from lora_lightning.dropout import Dropout

    Dropout.forward = nn.Dropout.forward
    return run_package(n_samples, repeats, model_kw, data_kw, name)


def run_all_tokens(n_samples: int, repeats: int, model_kw: dict, data_kw: dict, name: str) -> dict:
    """``run_package`` with the last layer computed for every token (no ``last_layer_first_token_only``)."""
    import lora_lightning.model

    lora_lightning.model.last_layer_first_token_only = lambda model: False
    return run_package(n_samples, repeats, model_kw, data_kw, name)


def run_bare_loop(n_samples: int, repeats: int, model_kw: dict, data_kw: dict, name: str) -> dict:
    """The same model, batches and AdamW in a plain loop: no Lightning, no logging, no reseeding; what
    it gains over ``run_package`` is the cost of Lightning's loop per step."""
    from lora_lightning.model import LoRAClassifier

    torch.manual_seed(0)
    module = LoRAClassifier(MODEL, **model_kw).train()
    loader = datamodule(n_samples, **data_kw).train_dataloader()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    times, real, padded = [], 0, 0
    for _ in range(repeats + 1):
        start, real, padded = time.perf_counter(), 0, 0
        for batch in loader:
            r, p = tokens(batch)
            real, padded = real + r, padded + p
            module._shared_step(batch)[0].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    t = statistics.median(times[1:])
    return {"row": name, "samples_per_s": n_samples / t, "real_tokens_per_s": real / t, "padded_tokens_per_s": padded / t,
            "seconds_per_pass": t, "passes": repeats, "peak_rss_mib": peak_rss_mib(), "warmup_s": times[0]}


VARIANTS = [  # (row, model options, data options, environment, function)
    ("baseline (configs/sst2.yaml)", {}, {}, {}, run_package),
    ("last layer for every token (before)", {}, {}, {}, run_all_tokens),
    ("torch nn.Dropout masks (bernoulli_, before)", {}, {}, {}, run_torch_dropout),
    ("lora_dropout 0 (12 fewer dropout masks per step)", {"lora_dropout": 0.0}, {}, {}, run_package),
    ("backbone_dropout 0 (20 fewer dropout masks per step)", {"backbone_dropout": 0.0}, {}, {}, run_package),
    ("length_grouping megabatch (transformers' grouping)", {}, {"length_grouping": "megabatch"}, {}, run_package),
    ("num_workers 1 (collation in a worker process)", {}, {"num_workers": 1}, {}, run_package),
    ("plain loop, same batches (no Lightning, no logging)", {}, {}, {}, run_bare_loop),
    ("torch.compile(dynamic=True) of the backbone", {"compile": True}, {}, {}, run_package),
    *((f"{name} (LD_PRELOAD)", {}, {}, {"LD_PRELOAD": path}, run_package) for name, path in ALLOCATORS.items()),
    ("OMP_WAIT_POLICY=PASSIVE (threads sleep between ops)", {}, {}, {"OMP_WAIT_POLICY": "PASSIVE"}, run_package),
]


def levers(n_samples: int = 3200, repeats: int = 1, rounds: int = 3, only: str | None = None,
           out: str = str(RESULTS.parent / "levers.json")) -> list[dict]:
    """This package's loop with one lever changed at a time; writes benchmarks/results/levers.json.

    Args:
        n_samples: training sentences per pass.
        repeats: timed passes per row and round (after one warm-up pass).
        rounds: interleaved rounds over all rows.
        only: comma-separated substrings of row names to run (the baseline always runs).
        out: the JSON file to write.
    """
    chosen = [v for i, v in enumerate(VARIANTS)
              if i == 0 or not only or any(s.strip() in v[0] for s in only.split(","))]
    runs: dict[str, list[dict]] = {}
    for round_ in range(rounds):
        for name, m, d, env, fn in chosen:
            if "LD_PRELOAD" in env and not Path(env["LD_PRELOAD"]).is_file():
                print(f"skipped: {name}: {env['LD_PRELOAD']} is not installed")
                continue
            runs.setdefault(name, []).append(with_env(env, fn, n_samples, repeats, m, d, name))
            print(f"round {round_ + 1}/{rounds}: {name}: {runs[name][-1]['samples_per_s']:.1f} samples/s", flush=True)
    rows = []
    for name, results in runs.items():
        speeds = [r["samples_per_s"] for r in results]
        middle = sorted(results, key=lambda r: r["samples_per_s"])[len(results) // 2]
        rows.append({**middle, "samples_per_s": statistics.median(speeds), "samples_per_s_min": min(speeds),
                     "samples_per_s_max": max(speeds), "rounds": len(results),
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in results)})
    base = rows[0]["samples_per_s"]
    print(f"\n{n_samples} sentences, {rounds} rounds x {repeats} timed pass(es), {torch.get_num_threads()} threads")
    print(f"{'lever':56} {'samples/s':>10} {'(min-max)':>13} {'real tok/s':>11} {'padded/real':>12} "
          f"{'peak RSS MiB':>13} {'vs baseline':>12}")
    for r in rows:
        spread = f"{r['samples_per_s_min']:.0f}-{r['samples_per_s_max']:.0f}"
        print(f"{r['row']:56} {r['samples_per_s']:>10.1f} {spread:>13} {r['real_tokens_per_s']:>11.0f} "
              f"{r['padded_tokens_per_s'] / r['real_tokens_per_s']:>12.3f} {r['peak_rss_mib']:>13.0f} "
              f"{r['samples_per_s'] / base:>11.2f}x")
    out = Path(out)
    command = f"python -m benchmarks.levers --n_samples {n_samples} --repeats {repeats} --rounds {rounds}"
    command += (f" --only '{only}'" if only else "") + (f" --out {out}" if out != RESULTS.parent / "levers.json" else "")
    out.write_text(json.dumps({"command": command,
                               "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(levers, as_positional=False)
