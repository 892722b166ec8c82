"""Serving many adapters on one base (issue 28): the engine alone, its memory, and the server over HTTP.

    python -m benchmarks.serve_bench                         # this CPU, the packaged MiniLM-L6, 8 adapters
    python -m benchmarks.serve_bench --smoke true --http false   # seconds: the tiny model, every row's code

Adapters are LoRAClassifier checkpoints with random LoRA and heads (speed and memory do not depend on the values;
exactness is tests/test_multi_lora.py's), 8 of them, r=4 on every Linear (the SST-2 study's best recipe) or on
query+value. Rows: 512 GLUE SST-2 dev sentences in file order, batches of 32, row i asking adapter i % 8.

- engine: sentences/s of ``engine.Engine`` on mixed batches, and with one adapter for every row; against one merged
  single-task transformers model (``export --format merged``) on the same batches (1.00x), and PEFT with the same 8
  adapters (``PeftModel`` + ``load_adapter``) in a mixed batch (``adapter_names=``), the same threads. Side by side:
  batch by batch, the four in turn, 5 passes after a warm-up; each batch's median time (``interleaved``).
- memory: the process's resident memory (``VmRSS``) before and after adding the 8 adapters to a loaded engine, per
  adapter, and the bytes of their tensors; a merged copy's bytes for comparison.
- http (``--http true``): ``python -m lora_lightning serve`` with the 8 adapters, and a plain
  ``transformers.pipeline`` on the merged export behind the same LitServe server (``--pipeline_server``); at 1, 8 and
  32 concurrent clients, one sentence per request: sentences/s and p50 / p95 latency; then a load test of 2,000
  requests from 16 clients mixing all 8 adapters, every answer compared with the adapter's checkpoint alone.

Writes ``--json_path`` (benchmarks/results/serve_bench.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import litserve as ls
import pytorch_lightning as pl
import torch

PACKAGED = "sentence-transformers/all-MiniLM-L6-v2"
ALL_LINEARS = ["query", "key", "value", "output.dense", "intermediate.dense"]


def rss() -> int:
    """This process's resident memory, bytes (``/proc/self/status`` VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def make_adapters(folder: Path, model: str, targets: list[str], n: int = 8, max_length: int = 128) -> dict[str, str]:
    """``n`` checkpoints of random adapters (LoRA r=4 on ``targets``, a 2-label head each), as ``fit`` writes them:
    ``lora_A`` as initialised (Kaiming-uniform), ``lora_B`` and the head drawn with a trained adapter's scale
    (std 0.02), so activations stay as large as a real adapter's."""
    from lora_lightning.model import LoRAClassifier

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        torch.manual_seed(i)
        m = LoRAClassifier(model, r=4, lora_alpha=16, lora_dropout=0.0, target_modules=targets, num_labels=2,
                           id2label={0: f"no-{i}", 1: f"yes-{i}"})
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.requires_grad and not name.endswith("lora_A"):
                    p.normal_(std=0.02)
        ckpt = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), "global_step": 0,
                "datamodule_hyper_parameters": {"max_length": max_length}, "pytorch-lightning_version": pl.__version__}
        m.on_save_checkpoint(ckpt)
        path = folder / f"adapter{i}.ckpt"
        torch.save(ckpt, path)
        out[f"a{i}"] = str(path)
    return out


def sentences(glue_dir: str, n: int) -> list[str]:
    """The first ``n`` sentences of GLUE SST-2's dev set (``glue_dir``: the SST-2 folder)."""
    from lora_lightning.data.sst2 import read_split

    return list(read_split(Path(glue_dir) / "dev.tsv", True)["sentence"][:n])


def interleaved(runs: dict, passes: int = 5) -> dict[str, float]:
    """Sentences per second of each ``name: (fn, batches)`` (the same batches, in each one's own rows), measured side
    by side: batch by batch, every run in turn, ``passes`` times after one warm-up pass; each batch's median time,
    summed. Interleaving at this grain puts every run through the same moments of a shared CPU's noise (run one
    after another, a run's rate moved by 10-15% between passes here)."""
    for fn, batches in runs.values():
        fn(batches[0])
    n = len(next(iter(runs.values()))[1])
    times = {name: [[] for _ in range(n)] for name in runs}
    for _ in range(passes):
        for i in range(n):
            for name, (fn, batches) in runs.items():
                start = time.perf_counter()
                fn(batches[i])
                times[name][i].append(time.perf_counter() - start)
    return {name: sum(len(b) for b in runs[name][1]) / sum(statistics.median(t) for t in times[name]) for name in runs}


def engine_rows(model: str, ckpts: dict[str, str], texts: list[str], batch: int, folder: Path) -> dict:
    """Engine mixed / one adapter, merged single-task model, PEFT mixed batch: sentences/s on the same batches."""
    import peft
    from transformers import AutoModelForSequenceClassification

    from lora_lightning.engine import Engine, Row
    from lora_lightning.export import export
    from lora_lightning.hub import resolve_model_path

    names = list(ckpts)
    batches = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    engine = Engine(model)
    for n, p in ckpts.items():
        engine.add(n, p)
    tok = engine.tokenizer
    mixed = [[Row(names[(i + j) % len(names)], t) for j, t in enumerate(b)] for i, b in zip(range(0, len(texts), batch), batches)]
    one = [[Row(names[0], t) for t in b] for b in batches]
    merged_dir = folder / "merged"
    if not merged_dir.exists():
        export(ckpts[names[0]], str(merged_dir), format="merged")
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()

    @torch.no_grad()
    def run_merged(b):
        return merged(**tok(b, padding=True, truncation=True, max_length=128, return_tensors="pt")).logits

    base = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(model), num_labels=2).eval()
    folders = {}
    for n, p in ckpts.items():
        d = folder / f"peft-{n}"
        if not d.exists():
            export(p, str(d), format="adapter")
        folders[n] = d
    pm = peft.PeftModel.from_pretrained(base, folders[names[0]], adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(folders[n], adapter_name=n)
    pm.eval()

    @torch.no_grad()
    def run_peft(b_rows):
        texts_, adapters = [r.text for r in b_rows], [r.adapter for r in b_rows]
        return pm(**tok(texts_, padding=True, truncation=True, max_length=128, return_tensors="pt"), adapter_names=adapters).logits

    out = interleaved({"merged": (run_merged, batches), "engine_mixed": (engine.outputs, mixed),
                       "engine_one_adapter": (engine.outputs, one), "peft_mixed": (run_peft, mixed)})
    before = rss()
    fresh = Engine(model)
    loaded = rss()
    for n, p in ckpts.items():
        fresh.add(n, p)
    after = rss()
    out["memory"] = {"engine_loaded_bytes": loaded - before, "eight_adapters_rss_bytes": after - loaded,
                     "per_adapter_rss_bytes": (after - loaded) / len(ckpts),
                     "per_adapter_tensor_bytes": statistics.fmean(fresh.memory.values()),
                     "merged_copy_bytes": (merged_dir / "model.safetensors").stat().st_size}
    return out


# --- over HTTP ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, log: Path, threads: int) -> subprocess.Popen:
    import requests

    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).text.strip('"') == "ok":
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def load(url: str, bodies: list[dict], clients: int) -> tuple[dict, list]:
    """POST every body with ``clients`` threads; sentences/s, p50 / p95 latency (ms), errors, and the answers."""
    import requests

    local = threading.local()

    def one(body):
        s = getattr(local, "session", None) or setattr(local, "session", requests.Session()) or local.session
        t = time.perf_counter()
        r = s.post(f"{url}/predict", json=body, timeout=120)
        return time.perf_counter() - t, r.status_code, r.json() if r.status_code == 200 else r.text

    start_t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - start_t
    latencies = sorted(r[0] * 1000 for r in results)
    stats = {"clients": clients, "requests": len(bodies), "sentences_per_s": len(bodies) / wall,
             "p50_ms": latencies[len(latencies) // 2], "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
             "errors": sum(r[1] != 200 for r in results)}
    return stats, results


def http_rows(model: str, ckpts: dict[str, str], texts: list[str], folder: Path, requests_per_level: int,
              load_requests: int, threads: int) -> dict:
    names = list(ckpts)
    port = free_port()
    serve = [sys.executable, "-m", "lora_lightning", "serve", "--adapters", *(f"{n}={p}" for n, p in ckpts.items()),
             "--port", str(port), "--max_batch_size", "32", "--batch_timeout", "0.005"]
    out = {"engine_server": [], "pipeline_server": []}
    proc = start(serve, port, folder / "serve.log", threads)
    try:
        url = f"http://127.0.0.1:{port}"
        for clients in (1, 8, 32):
            bodies = [{"adapter": names[i % len(names)], "text": texts[i % len(texts)]} for i in range(requests_per_level)]
            out["engine_server"].append(load(url, bodies, clients)[0])
        bodies = [{"adapter": names[i % len(names)], "text": texts[i % len(texts)], "all_scores": True}
                  for i in range(load_requests)]
        stats, results = load(url, bodies, 16)
        truth = offline(ckpts, texts)
        worst = 0.0
        for body, (_, status, answer) in zip(bodies, results):
            if status == 200:
                got = [s["score"] for s in answer["scores"]]
                worst = max(worst, max(abs(a - b) for a, b in zip(got, truth[body["adapter"]][body["text"]])))
        stats["max_abs_diff_vs_offline"] = worst
        stats["all_equal_1e-5"] = worst <= 1e-5 and stats["errors"] == 0
        out["load_test"] = stats
    finally:
        stop(proc)
    port = free_port()
    pipe = [sys.executable, "-m", "benchmarks.serve_bench", "--pipeline_server", str(folder / "merged"), "--port", str(port)]
    proc = start(pipe, port, folder / "pipeline.log", threads)
    try:
        url = f"http://127.0.0.1:{port}"
        for clients in (1, 8, 32):
            bodies = [{"adapter": "merged", "text": texts[i % len(texts)]} for i in range(requests_per_level)]
            out["pipeline_server"].append(load(url, bodies, clients)[0])
    finally:
        stop(proc)
    return out


def offline(ckpts: dict[str, str], texts: list[str]) -> dict[str, dict[str, list[float]]]:
    """Each adapter's probabilities for every text, from its checkpoint alone (``LoRAClassifier``)."""
    from lora_lightning.hub import load_tokenizer
    from lora_lightning.model import LoRAClassifier

    out = {}
    for name, path in ckpts.items():
        m = LoRAClassifier.load_from_checkpoint(path)
        tok = load_tokenizer(m.hparams.model_name_or_path)
        probs = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                probs += m(**tok(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")).softmax(-1).tolist()
        out[name] = dict(zip(texts, probs))
    return out


class PipelineAPI(ls.LitAPI):
    """A plain ``transformers.pipeline`` on a merged export, for the baseline server."""

    def __init__(self, folder: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    def setup(self, device):
        from transformers import pipeline

        self.pipe = pipeline("text-classification", model=self.folder, device="cpu", truncation=True)

    def decode_request(self, request):
        return request["text"]

    def batch(self, inputs):
        return inputs

    def predict(self, texts):
        return self.pipe(list(texts), batch_size=len(texts))

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return output


def pipeline_server(folder: str, port: int) -> None:
    """The baseline: ``PipelineAPI`` behind LitServe, with the batching the benchmark gives the serve command (32 requests, 5 ms)."""
    server = ls.LitServer(PipelineAPI(folder, max_batch_size=32, batch_timeout=0.005), accelerator="cpu")
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", default="false", choices=["true", "false"])
    parser.add_argument("--http", default="true", choices=["true", "false"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json_path", default="benchmarks/results/serve_bench.json")
    parser.add_argument("--work_dir", default="lightning_logs/serve_bench")
    parser.add_argument("--model", default=None)
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR") and str(Path(os.environ["GLUE_DIR"]) / "SST-2"))
    parser.add_argument("--pipeline_server", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.pipeline_server:
        return pipeline_server(a.pipeline_server, a.port)
    torch.set_num_threads(a.threads)
    smoke = a.smoke == "true"
    model = a.model or PACKAGED
    n_texts = 64 if smoke else 512
    texts = sentences(a.glue_dir, n_texts)
    work = Path(a.work_dir)
    result = {"date": date.today().isoformat(), "torch": torch.__version__, "threads": a.threads, "model": model,
              "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                           if l.startswith("model name")), platform.machine()),
              "command": "python -m benchmarks.serve_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "sentences": len(texts), "batch": 32, "adapters": 8, "rows": {}}
    for recipe, targets in (("all-linear", ALL_LINEARS), ("query-value", ["query", "value"])):
        ckpts = make_adapters(work / recipe, model, targets)
        row = engine_rows(model, ckpts, texts, 32, work / recipe)
        row["engine_mixed_vs_merged"] = row["engine_mixed"] / row["merged"]
        row["engine_mixed_vs_peft_mixed"] = row["engine_mixed"] / row["peft_mixed"]
        row["peft_mixed_vs_merged"] = row["peft_mixed"] / row["merged"]
        result["rows"][recipe] = row
        if recipe == "all-linear" and a.http == "true":
            result["http"] = http_rows(model, ckpts, texts, work / recipe, 64 if smoke else 256, 200 if smoke else 2000,
                                       a.threads)
    for recipe, row in result["rows"].items():
        print(f"{recipe:12} merged {row['merged']:6.1f}/s  engine mixed {row['engine_mixed']:6.1f}/s "
              f"({row['engine_mixed_vs_merged']:.2f}x merged, {row['engine_mixed_vs_peft_mixed']:.2f}x PEFT)  "
              f"one adapter {row['engine_one_adapter']:6.1f}/s  PEFT mixed {row['peft_mixed']:6.1f}/s "
              f"({row['peft_mixed_vs_merged']:.2f}x)  per adapter {row['memory']['per_adapter_rss_bytes'] / 2**20:.2f} MiB RSS, "
              f"{row['memory']['per_adapter_tensor_bytes'] / 2**20:.2f} MiB tensors")
    for kind, rows in (result.get("http") or {}).items():
        if isinstance(rows, list):
            for r in rows:
                print(f"{kind:16} {r['clients']:3} clients: {r['sentences_per_s']:6.1f}/s p50 {r['p50_ms']:.0f} ms "
                      f"p95 {r['p95_ms']:.0f} ms errors {r['errors']}")
    if "http" in result:
        lt = result["http"]["load_test"]
        print(f"load test: {lt['requests']} requests, 16 clients, {lt['errors']} errors, max |diff| vs offline "
              f"{lt['max_abs_diff_vs_offline']:.2e}")
    path = Path(a.json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
