"""The GPU benchmark (issue 21): the training loop at the device's speed, side by side with a PEFT loop, in one run.

    python -m benchmarks.gpu_bench                    # a CUDA machine: every row, ~6-8 min on one H200 (estimate)
    python -m benchmarks.gpu_bench --rows throughput  # one group
    python -m benchmarks.gpu_bench --smoke true       # anywhere (CPU, ~1 min): the tiny random model, a few steps

Writes one JSON (``--out``, default ``benchmarks/results/gpu_bench.json``): the device's name, the torch / CUDA /
Lightning versions, the measured bf16 GEMM rate, and the rows:

1. ``exact``: the fast step (``torch.compile(mode="reduce-overhead")``: CUDA graphs, one per batch shape) against the
   eager step on three batches of different lengths, dropout off: the largest difference of the loss and of any
   trainable gradient (the test suite checks the same on CPU: ``test_model::test_compiled_step_equals_the_eager_step``).
2. ``throughput``: a bert-base-shaped model (random weights: speed depends on shapes only), LoRA r=4 on
   query+value, batch 32, the first ``--n_samples`` real SST-2 training sentences in length-sorted batches padded to
   a multiple of 8, for bf16-mixed and fp32: this package's Lightning loop eager and fast (``--model.compile true
   --model.compile_mode reduce-overhead``), and a PEFT + plain PyTorch loop (autocast, fused AdamW) on the same
   batches. Samples/s, real tokens/s and model FLOPs utilisation (FLOPs per real token x real tokens/s / the
   measured dense bf16 GEMM rate, for both precisions). The first epoch is warm-up (compilation, graph capture).
3. ``fit``: the default recipe (configs/sst2.yaml: the packaged MiniLM, the real SST-2, 3 epochs, validation
   included) as ``python -m lora_lightning fit`` runs it: eager fp32 (the baseline), fast fp32, fast bf16-mixed;
   wall seconds of ``fit`` (start-up and data included), best val_acc, and GLUE dev accuracy of the best checkpoint.

The targets (issue 21): ``fit`` <= 60 s with accuracy within noise of eager; bert-base bf16 >= 2,000 samples/s and
>= 2x the PEFT loop; bf16-mixed no slower than fp32.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch

RESULTS = Path(__file__).parent / "results" / "gpu_bench.json"
ROWS = ("exact", "throughput", "fit")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bf16_matmul_rate(device: str, n: int = 8192, repeats: int = 20) -> float:
    """Measured dense bf16 FLOP/s of an ``n x n x n`` matmul on ``device``."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def flops_per_real_token(config) -> float:
    """Training FLOPs per real token of a LoRA step: the frozen Linears' forward and their input gradients
    (2 x 2 x layers x (4 d^2 + 2 d ffn)); LoRA's own and attention's are small beside them and left out."""
    d, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 2 * 2 * layers * (4 * d * d + 2 * d * ffn)


class EpochTimer(pl.Callback):
    """Times each training epoch (synchronising CUDA) and counts its real and padded tokens."""

    def __init__(self, device: str) -> None:
        self.device, self.times, self.real, self.padded = device, [], 0, 0

    def on_train_epoch_start(self, trainer, module) -> None:
        sync(self.device)
        self.start, self.real, self.padded = time.perf_counter(), 0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.real += int(batch["attention_mask"].sum())
        self.padded += batch["attention_mask"].numel()

    def on_train_epoch_end(self, trainer, module) -> None:
        sync(self.device)
        self.times.append(time.perf_counter() - self.start)


def row_result(name: str, precision: str, seconds: float, n: int, real: int, config, rate: float, **extra) -> dict:
    real_per_s = real / seconds
    return {"row": name, "precision": precision, "samples_per_s": round(n / seconds, 1),
            "real_tokens_per_s": round(real_per_s), "mfu_vs_bf16_peak": round(flops_per_real_token(config) * real_per_s / rate, 4),
            "seconds_per_epoch": round(seconds, 3), **extra}


def package_run(folder: str, dm_kw: dict, precision: str, fast: bool, device: str, epochs: int, rate: float,
                name: str) -> dict:
    """This package's Lightning loop on ``folder``; the first epoch is warm-up."""
    from lora_lightning.data import SST2DataModule
    from lora_lightning.model import LoRAClassifier

    pl.seed_everything(0)
    model = LoRAClassifier(folder, compile=fast, compile_mode="reduce-overhead" if fast else "default")
    timer = EpochTimer(device)
    trainer = pl.Trainer(accelerator=device, devices=1, precision=precision, max_epochs=epochs, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer])
    trainer.fit(model, SST2DataModule(folder, **dm_kw))
    seconds = statistics.median(timer.times[1:])
    return row_result(name, precision, seconds, dm_kw["max_train_samples"], timer.real, model.model.config, rate,
                      warmup_s=round(timer.times[0], 1))


def peft_run(folder: str, dm_kw: dict, precision: str, device: str, epochs: int, rate: float) -> dict:
    """PEFT LoRA (r=4, query+value) and a plain PyTorch loop: the same length-sorted batches padded to a multiple of 8,
    AdamW (fused on CUDA), autocast for bf16-mixed; the first epoch is warm-up."""
    import peft
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    from lora_lightning.data import SST2DataModule, SortedLengthBatchSampler

    torch.manual_seed(0)
    dm = SST2DataModule(folder, **dm_kw)
    dm.setup("fit")
    ds = dm.datasets["train"]
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, task_type="SEQ_CLS",
                                                       target_modules=["query", "value"])).to(device).train()
    sampler = SortedLengthBatchSampler(dm_kw["batch_size"], list(ds["length"]), seed=0)
    loader = DataLoader(ds.remove_columns(["length", "full_length"]), batch_size=dm_kw["batch_size"], sampler=sampler,
                        collate_fn=DataCollatorWithPadding(dm.tokenizer, pad_to_multiple_of=8), pin_memory=device == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, **({"fused": True} if device == "cuda" else {}))
    autocast = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    times, real = [], 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        sync(device)
        start, real = time.perf_counter(), 0
        for batch in loader:
            real += int(batch["attention_mask"].sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return row_result("peft + plain loop", precision, statistics.median(times[1:]), dm_kw["max_train_samples"], real,
                      model.config, rate)


def exactness(folder: str, device: str) -> dict:
    """The largest |difference| of loss and trainable gradients, fast (compiled) step vs eager, on 3 batch shapes."""
    import copy

    from lora_lightning.hub import load_tokenizer
    from lora_lightning.model import LoRAClassifier

    torch.manual_seed(0)
    eager = LoRAClassifier(folder, lora_dropout=0.0, backbone_dropout=0.0).to(device)
    for module in eager.modules():
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B, std=0.02)
    fast = copy.deepcopy(eager)
    fast.model.forward = torch.compile(fast.model.forward, dynamic=True, mode="reduce-overhead")
    tokenizer = load_tokenizer(folder)
    loss_diff = grad_diff = 0.0
    for words in (3, 11, 27):
        texts = [" ".join(["a fine film"] * (words // 3 + i)) for i in range(8)]
        batch = tokenizer(texts, padding=True, pad_to_multiple_of=8, return_tensors="pt").to(device)
        labels = torch.arange(8, device=device) % 2
        grads = []
        for module in (eager, fast):
            module.zero_grad()
            loss = module.loss_fn(module(**batch), labels)
            loss.backward()
            grads.append((loss.detach(), [p.grad.detach().clone() for p in module.parameters() if p.requires_grad]))
        loss_diff = max(loss_diff, float((grads[0][0] - grads[1][0]).abs()))
        grad_diff = max(grad_diff, max(float((a - b).abs().max()) for a, b in zip(grads[0][1], grads[1][1])))
    return {"row": "exact", "max_loss_diff": loss_diff, "max_grad_diff": grad_diff}


def fit_run(name: str, extra: list[str], log_dir: str) -> dict:
    """``python -m lora_lightning fit`` of configs/sst2.yaml with ``extra``, timed whole; then GLUE dev (test) of its best."""
    from lora_lightning.cli import cli_main

    start = time.perf_counter()
    cli = cli_main(["fit", "--config", "configs/sst2.yaml", "--trainer.logger.init_args.save_dir", log_dir,
                    "--trainer.logger.init_args.name", "gpu_bench", "--trainer.enable_progress_bar", "false", *extra])
    seconds = time.perf_counter() - start
    best = cli.trainer.checkpoint_callback
    (tested,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    return {"row": name, "fit_seconds": round(seconds, 1), "val_acc": round(float(best.best_model_score), 4),
            "dev_acc": round(tested["test_acc"], 4), "steps": cli.trainer.global_step,
            "command": "python -m lora_lightning fit --config configs/sst2.yaml " + " ".join(extra)}


def smoke_folder(root: Path) -> str:
    """The tests' tiny random BERT (2 layers, hidden 32) with the packaged MiniLM tokenizer's vocabulary cut to its ids."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "is", "a", "good", "bad", "fine", "dull"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab=str(root / "vocab.txt"), model_max_length=512).save_pretrained(root)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(root)
    return str(root)


def main(rows: str = ",".join(ROWS), n_samples: int = 32000, epochs: int = 3, smoke: bool = False,
         out: str = str(RESULTS), log_dir: str = "lightning_logs") -> dict:
    """Run the rows (comma-separated: exact, throughput, fit) and write one JSON.

    Args:
        rows: which groups to run.
        n_samples: training sentences per throughput epoch (32,000 at batch 32: 1,000 steps).
        epochs: throughput epochs (the first is warm-up).
        smoke: the tiny random model on CPU, 64 sentences, ``fit`` of 4 steps without compiling (a check of the
            script's code anywhere; its numbers mean nothing).
        out: the JSON file.
        log_dir: where the ``fit`` rows write their runs.
    """
    device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    wanted = [r for r in rows.split(",") if r]
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        raise ValueError(f"--rows: unknown {unknown}; expected some of {', '.join(ROWS)}")
    if device == "cpu" and not smoke:
        raise SystemExit("gpu_bench: no CUDA device here (pass --smoke true for the CPU check of the script)")
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else f"CPU {platform.machine()} (smoke)",
              "torch": torch.__version__, "cuda": torch.version.cuda, "lightning": pl.__version__,
              "command": f"python -m benchmarks.gpu_bench --rows {rows}" + (" --smoke true" if smoke else ""),
              "date": time.strftime("%Y-%m-%d"), "rows": []}
    rate = bf16_matmul_rate(device, n=8192 if device == "cuda" else 256, repeats=20 if device == "cuda" else 2)
    result["bf16_matmul_tflops"] = round(rate / 1e12, 2)
    with tempfile.TemporaryDirectory() as tmp:
        if smoke:
            folder = smoke_folder(Path(tmp))
            n_samples, epochs = 64, 2
        else:
            from benchmarks.checkpoint_size import bert_base_folder

            folder = bert_base_folder(Path(tmp))
        dm_kw = {"batch_size": 32, "max_train_samples": n_samples, "max_eval_samples": 32, "val_split": "random"}
        if "exact" in wanted:
            result["rows"].append(exactness(folder, device) if not smoke else {"row": "exact", "skipped": "smoke"})
        if "throughput" in wanted:
            for precision in ("bf16-mixed", "32-true"):
                for fast in (False, True):
                    if smoke and fast:
                        continue
                    name = f"package {'fast' if fast else 'eager'}"
                    result["rows"].append(package_run(folder, dm_kw, precision, fast, device, epochs, rate, name))
                result["rows"].append(peft_run(folder, dm_kw, precision, device, epochs, rate))
        if "fit" in wanted:
            variants = [("fit eager fp32", []),
                        ("fit fast fp32", ["--model.compile", "true", "--model.compile_mode", "reduce-overhead"]),
                        ("fit fast bf16-mixed", ["--model.compile", "true", "--model.compile_mode", "reduce-overhead",
                                                 "--trainer.precision", "bf16-mixed"])]
            for name, extra in variants:
                if smoke:
                    extra = [e for e in extra if e not in ("--model.compile", "true", "--model.compile_mode",
                                                           "reduce-overhead")]
                    extra += ["--model.model_name_or_path", folder, "--trainer.max_steps", "4",
                              "--trainer.accelerator", "cpu", "--data.max_train_samples", "64",
                              "--data.max_eval_samples", "32", "--trainer.val_check_interval", "2"]
                result["rows"].append(fit_run(name, extra, log_dir))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    for row in result["rows"]:
        print(json.dumps(row))
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
