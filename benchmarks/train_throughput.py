"""Training throughput: this package vs a PEFT loop vs seed-style padding vs the machine's limit.

    GLUE_DIR=../shared/data/glue python -m benchmarks.train_throughput [--n_samples 3200] [--repeats 3]

Every row trains the packaged all-MiniLM-L6-v2 with LoRA r=4, lora_alpha=16 on query+value, batch 32,
AdamW, on the same first ``n_samples`` sentences of the 90/10 train split, with the same thread count,
each in its own child process (so peak RSS is that row's alone):

1. ``package``  — this package's Lightning training loop as ``fit`` runs it (length-grouped batches);
2. ``peft``     — ``peft`` LoRA, plain PyTorch loop, random batches padded per batch;
3. ``seed``     — the same PEFT loop with every sentence padded to ``max_length=128`` (on a quarter
                  of the sentences, one timed pass: it is ~10x slower);
4. ``limit``    — the measured fp32 GEMM rate on the model's own shapes divided by the FLOPs that one
                  real token costs in a LoRA training step, times the real tokens per sample.

Also: evaluation (sorted by length vs input order), peak RSS of LoRA vs full fine-tuning, and
inference of the plain base model vs LoRA unmerged vs merged. Throughput is the median over
``repeats`` passes after one warm-up pass. Prints tables; writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
RESULTS = Path(__file__).parent / "results" / "train_throughput.json"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def datamodule(n_samples: int, **kw):
    from lora_lightning.data import SST2DataModule

    dm = SST2DataModule(MODEL, max_train_samples=n_samples, max_eval_samples=n_samples, **kw)
    dm.setup("fit")
    return dm


def tokens(batch) -> tuple[int, int]:
    return int(batch["attention_mask"].sum()), batch["attention_mask"].numel()


def summarise(name: str, times: list[float], n: int, real: int, padded: int) -> dict:
    t = statistics.median(times)
    return {"row": name, "samples_per_s": n / t, "real_tokens_per_s": real / t, "padded_tokens_per_s": padded / t,
            "seconds_per_pass": t, "passes": len(times), "peak_rss_mib": peak_rss_mib()}


class Timer(pl.Callback):
    """A Lightning callback timing each training epoch and counting real and padded tokens
    (synchronising CUDA, when there is one, so the times are the GPU's too)."""

    def __init__(self):
        self.times, self.real, self.padded = [], 0, 0

    @staticmethod
    def _sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_epoch_start(self, trainer, module):
        self._sync()
        self.start, self.real, self.padded = time.perf_counter(), 0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        real, padded = tokens(batch)
        self.real, self.padded = self.real + real, self.padded + padded

    def on_train_epoch_end(self, trainer, module):
        self._sync()
        self.times.append(time.perf_counter() - self.start)


def run_package(n_samples: int, repeats: int, model_kw: dict | None = None, data_kw: dict | None = None,
                name: str = "package (Lightning fit, length-grouped)") -> dict:
    """The Lightning loop ``fit`` runs, timed per epoch by a callback; the first epoch is warm-up
    (it also holds ``torch.compile``'s compile time, reported as ``warmup_s``)."""
    from lora_lightning.model import LoRAClassifier

    timer = Timer()
    pl.seed_everything(0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=repeats + 1, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer])
    trainer.fit(LoRAClassifier(MODEL, **(model_kw or {})), datamodule(n_samples, **(data_kw or {})))
    row = summarise(name, timer.times[1:], n_samples, timer.real, timer.padded)
    row["warmup_s"] = timer.times[0]
    return row


def peft_model(lora: bool = True):
    import peft
    from transformers import AutoModelForSequenceClassification

    from lora_lightning.hub import resolve_model_path

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(MODEL), num_labels=2)
    if lora:
        config = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                                 task_type="SEQ_CLS")
        model = peft.get_peft_model(model, config)
    return model.train()


def run_plain_loop(name: str, n_samples: int, repeats: int, pad_to: int | None, lora: bool = True) -> dict:
    """What a PEFT user writes first: shuffled batches, AdamW, loss.backward(), step."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    torch.manual_seed(0)
    dm = datamodule(n_samples)
    model = peft_model(lora)
    padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {}
    collate = DataCollatorWithPadding(dm.tokenizer, **padding)
    loader = DataLoader(dm.datasets["train"].remove_columns(["length", "full_length"]), batch_size=32, shuffle=True, collate_fn=collate)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for _ in range(repeats + 1):
        start, real, padded = time.perf_counter(), 0, 0
        for batch in loader:
            r, p = tokens(batch)
            real, padded = real + r, padded + p
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return summarise(name, times[1:], n_samples, real, padded)


def gemm_rate(tokens_per_batch: int, shapes: list[tuple[int, int]], repeats: int = 20) -> float:
    """Measured fp32 FLOP/s of ``x @ W^T`` on the model's Linear shapes with ``tokens_per_batch`` rows."""
    flops, seconds = 0, 0.0
    for k, n in shapes:
        x, w = torch.randn(tokens_per_batch, k), torch.randn(n, k)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(x, w)
        seconds += time.perf_counter() - start
        flops += 2 * tokens_per_batch * k * n * repeats
    return flops / seconds


def run_limit(n_samples: int, real_tokens_per_sample: float, padded_len: float) -> dict:
    """The compute limit: GEMM rate / FLOPs per real token of a LoRA training step."""
    from transformers import AutoConfig

    from lora_lightning.hub import resolve_model_path

    c = AutoConfig.from_pretrained(resolve_model_path(MODEL))
    d, f, layers, r = c.hidden_size, c.intermediate_size, c.num_hidden_layers, 4
    linear_macs = 4 * d * d + 2 * d * f                      # q, k, v, o + FFN in/out, per token per layer
    attention_macs = 2 * padded_len * d                      # QK^T and AV, per token per layer
    forward = 2 * layers * (linear_macs + attention_macs)    # FLOPs per token
    lora = 2 * layers * 2 * 2 * r * d * 3                    # 2 adapters x 2 matmuls; fwd + 2 bwd
    per_token = 2 * forward + lora                           # forward + activation gradients (all layers
    # sit above the first adapter, layer 0's query) + LoRA's own; weight gradients of the frozen base: none
    shapes = [(d, d)] * 4 + [(d, f), (f, d)]
    rate = gemm_rate(int(32 * real_tokens_per_sample), shapes)
    samples = rate / (per_token * real_tokens_per_sample)
    return {"row": "limit (GEMM rate / FLOPs per real token)", "samples_per_s": samples,
            "real_tokens_per_s": samples * real_tokens_per_sample, "padded_tokens_per_s": None,
            "gemm_gflops": rate / 1e9, "flops_per_real_token": per_token, "peak_rss_mib": peak_rss_mib()}


def run_eval(n_samples: int, repeats: int) -> list[dict]:
    """Validation forward passes: sorted by length vs input order; base model vs LoRA unmerged vs merged."""
    from lora_lightning.lora import merge_lora
    from lora_lightning.model import LoRAClassifier

    rows = []
    torch.manual_seed(0)
    module = LoRAClassifier(MODEL).eval()
    plain = peft_model(lora=False).eval()

    def timed(name, model, loader):
        times, n = [], 0
        for i in range(repeats + 1):
            start, n = time.perf_counter(), 0
            with torch.inference_mode():
                for batch in loader:
                    batch = {k: v for k, v in batch.items() if k != "labels"}
                    model(**batch)
                    n += batch["input_ids"].shape[0]
            if i:
                times.append(time.perf_counter() - start)
        rows.append({"row": name, "samples_per_s": n / statistics.median(times), "passes": len(times)})

    unsorted = datamodule(n_samples, sort_eval_by_length=False).val_dataloader()
    ordered = datamodule(n_samples).val_dataloader()
    timed("eval, input order (LoRA unmerged)", module, unsorted)
    timed("eval, sorted by length (LoRA unmerged)", module, ordered)
    timed("eval, sorted: plain base model (no LoRA)", plain, ordered)
    merge_lora(module.model)
    timed("eval, sorted: LoRA merged", module, ordered)
    return rows


def child(queue, fn, args):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    result = fn(*args)
    queue.put(result)


def isolated(fn, *args):
    """Run ``fn(*args)`` in a fresh process; return its result (peak RSS is that process's own)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue, fn, args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(n_samples: int = 3200, repeats: int = 3) -> dict:
    """Run every row; print the tables; write benchmarks/results/train_throughput.json.

    Args:
        n_samples: training sentences per pass (the first of the seeded 90/10 train split).
        repeats: timed passes per row (median reported), after one warm-up pass.
    """
    threads = int(os.environ.get("BENCH_THREADS", torch.get_num_threads()))
    rows = [
        isolated(run_package, n_samples, repeats),
        isolated(run_plain_loop, "peft reference (random batches)", n_samples, repeats, None),
        # ~10x the tokens of the others: a quarter of the sentences, one timed pass (samples/s is per sentence)
        isolated(run_plain_loop, "seed-style (pad to 128)", n_samples // 4, 1, 128),
    ]
    ours = rows[0]
    real_per_sample = ours["real_tokens_per_s"] / ours["samples_per_s"]
    padded_len = ours["padded_tokens_per_s"] / ours["samples_per_s"]
    rows.append(isolated(run_limit, n_samples, real_per_sample, padded_len))
    memory = [
        isolated(run_plain_loop, "LoRA, plain loop (memory)", n_samples, 1, None),
        isolated(run_plain_loop, "full fine-tuning, plain loop (memory)", n_samples, 1, None, False),
    ]
    evals = isolated(run_eval, min(n_samples, 6735), repeats)

    print(f"\ntraining, {n_samples} sentences x {repeats} passes, batch 32, {threads} threads")
    print(f"{'row':44} {'samples/s':>10} {'real tok/s':>11} {'padded tok/s':>13} {'peak RSS MiB':>13} {'vs package':>10}")
    for r in rows:
        padded = f"{r['padded_tokens_per_s']:>13.0f}" if r["padded_tokens_per_s"] else f"{'-':>13}"
        print(f"{r['row']:44} {r['samples_per_s']:>10.1f} {r['real_tokens_per_s']:>11.0f} {padded} "
              f"{r['peak_rss_mib']:>13.0f} {r['samples_per_s'] / ours['samples_per_s']:>9.2f}x")
    print("\nmemory: " + " | ".join(f"{m['row']}: {m['peak_rss_mib']:.0f} MiB" for m in memory))
    print(f"\nevaluation ({evals[0]['passes']} passes):")
    for r in evals:
        print(f"{r['row']:44} {r['samples_per_s']:>10.1f} samples/s")
    meta = {
        "command": f"GLUE_DIR=../shared/data/glue python -m benchmarks.train_throughput --n_samples {n_samples} --repeats {repeats}",
        "threads": threads, "cores": os.cpu_count(), "cpu": _cpu_model(), "torch": torch.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
    }
    result = {"meta": meta, "training": rows, "memory": memory, "evaluation": evals}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
