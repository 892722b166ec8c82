"""Training-speed levers, one at a time, on this package's loop (same setup as train_throughput).

    GLUE_DIR=../shared/data/glue python -m benchmarks.levers [--n_samples 3200] [--repeats 2]

Each variant runs in its own process; samples/s is the median of ``repeats`` passes after a warm-up
pass (which also holds torch.compile's compile time). Writes benchmarks/results/levers.json.
"""

from __future__ import annotations

import json

from benchmarks.train_throughput import RESULTS, isolated, run_package


def levers(n_samples: int = 3200, repeats: int = 2) -> list[dict]:
    """This package's loop with one lever changed at a time; writes benchmarks/results/levers.json."""
    variants = [
        ("baseline (configs/sst2.yaml)", {}, {}),
        ("lora_dropout 0 (12 fewer dropout masks per step)", {"lora_dropout": 0.0}, {}),
        ("num_workers 1 (collation in a worker process)", {}, {"num_workers": 1}),
        ("torch.compile(dynamic=True) of the backbone", {"compile": True}, {}),
    ]
    rows = [isolated(run_package, n_samples, repeats, m, d, name) for name, m, d in variants]
    base = rows[0]["samples_per_s"]
    print(f"\n{'lever':52} {'samples/s':>10} {'vs baseline':>12} {'warm-up pass s':>15}")
    for r in rows:
        print(f"{r['row']:52} {r['samples_per_s']:>10.1f} {r['samples_per_s'] / base:>11.2f}x {r['warmup_s']:>15.1f}")
    out = RESULTS.parent / "levers.json"
    out.write_text(json.dumps({"command": f"python -m benchmarks.levers --n_samples {n_samples} "
                                          f"--repeats {repeats}", "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(levers, as_positional=False)
