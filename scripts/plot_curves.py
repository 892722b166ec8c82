"""Draw a run's TensorBoard curves (loss and accuracy vs step) into a PNG.

    python scripts/plot_curves.py --log_dir lightning_logs/sst2/version_0 --out docs/curves.png

Reads the event file with tensorboard's ``EventAccumulator`` and draws ``train_loss``,
``val_loss`` and ``val_acc`` against the optimizer step with matplotlib (``pip install -e .[bench]``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from every event file in ``log_dir``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return out


def main(log_dir: str, out: str = "docs/curves.png", title: str = "") -> Path:
    """Args:
        log_dir: a run's folder (``lightning_logs/sst2/version_N``).
        out: the PNG to write.
        title: figure title (default: the log folder).
    """
    scalars = read_scalars(log_dir)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for tag, style in (("train_loss", dict(alpha=0.6, lw=1)), ("val_loss", dict(marker="o", lw=2))):
        if tag in scalars:
            steps, values = zip(*scalars[tag])
            ax_loss.plot(steps, values, label=tag, **style)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    for tag in ("val_acc", "val_f1"):
        if tag in scalars:
            steps, values = zip(*scalars[tag])
            ax_acc.plot(steps, values, marker="o", label=tag)
            for s, v in zip(steps, values):
                ax_acc.annotate(f"{v:.4f}", (s, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax_acc.set_xlabel("optimizer step")
    ax_acc.set_ylabel("val split (6,735 sentences)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title or log_dir)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return Path(out)


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
