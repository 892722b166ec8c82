"""Training-speed levers, one at a time, on this package's loop (same setup as train_throughput).

    GLUE_DIR=../shared/data/glue python -m benchmarks.levers [--n_samples 3200] [--repeats 2]

Each variant runs in its own process; samples/s is the median of ``repeats`` passes after a warm-up
pass (which also holds torch.compile's compile time). Writes benchmarks/results/levers.json.

The allocator rows preload Debian's jemalloc / tcmalloc (``apt-get install libjemalloc2
libtcmalloc-minimal4``) into that row's process (``LD_PRELOAD``); a row whose library is not installed
is reported as skipped. Levers that change the batches or the numbers (dropout, length grouping)
also need a 1-epoch val_acc against today's: ``python -m benchmarks.sweep --rows levers``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks.train_throughput import RESULTS, isolated, run_package

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


def levers(n_samples: int = 3200, repeats: int = 2) -> list[dict]:
    """This package's loop with one lever changed at a time; writes benchmarks/results/levers.json."""
    variants = [
        ("baseline (configs/sst2.yaml)", {}, {}, {}),
        ("lora_dropout 0 (12 fewer dropout masks per step)", {"lora_dropout": 0.0}, {}, {}),
        ("backbone_dropout 0 (20 fewer dropout masks per step)", {"backbone_dropout": 0.0}, {}, {}),
        ("length_grouping sorted (batches of one length)", {}, {"length_grouping": "sorted"}, {}),
        ("num_workers 1 (collation in a worker process)", {}, {"num_workers": 1}, {}),
        ("torch.compile(dynamic=True) of the backbone", {"compile": True}, {}, {}),
        *((f"{name} (LD_PRELOAD)", {}, {}, {"LD_PRELOAD": path}) for name, path in ALLOCATORS.items()),
        ("OMP_WAIT_POLICY=PASSIVE (threads sleep between ops)", {}, {}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ]
    rows = []
    for name, m, d, env in variants:
        if "LD_PRELOAD" in env and not Path(env["LD_PRELOAD"]).is_file():
            print(f"skipped: {name}: {env['LD_PRELOAD']} is not installed")
            continue
        rows.append(with_env(env, run_package, n_samples, repeats, m, d, name))
    base = rows[0]["samples_per_s"]
    print(f"\n{'lever':56} {'samples/s':>10} {'real tok/s':>11} {'padded/real':>12} {'peak RSS MiB':>13} "
          f"{'vs baseline':>12} {'warm-up s':>10}")
    for r in rows:
        print(f"{r['row']:56} {r['samples_per_s']:>10.1f} {r['real_tokens_per_s']:>11.0f} "
              f"{r['padded_tokens_per_s'] / r['real_tokens_per_s']:>12.3f} {r['peak_rss_mib']:>13.0f} "
              f"{r['samples_per_s'] / base:>11.2f}x {r['warmup_s']:>10.1f}")
    out = RESULTS.parent / "levers.json"
    out.write_text(json.dumps({"command": f"python -m benchmarks.levers --n_samples {n_samples} "
                                          f"--repeats {repeats}", "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(levers, as_positional=False)
