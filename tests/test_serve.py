"""serve.py: `python -m lora_lightning serve` as a real subprocess on a free loopback port, talked to over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

from test_multi_lora import VARIANTS, trained

KEY = "s3cret"
TEXTS = ["the film is great", "a dull and boring movie", "very charming acting", "the plot is poor", "fine", "bad film"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """A server with 4 adapters of one tiny base: plain, DoRA (SST-2's labels), a 3-label multi-label one and a
    regression one; an API key; its own process group so nothing outlives the test."""
    tmp = tmp_path_factory.mktemp("serve")
    ckpts = {"plain": trained(tmp, tiny_model_dir, "", "plain", **VARIANTS["plain"]),
             "dora": trained(tmp, tiny_model_dir, "", "dora", **VARIANTS["dora"]),
             "emotions": trained(tmp, tiny_model_dir, "", "emotions", num_labels=3, r=4, lora_alpha=8,
                                 problem_type="multi_label_classification"),
             "score": trained(tmp, tiny_model_dir, "", "score", num_labels=1, r=4, lora_alpha=8, problem_type="regression")}
    port = free_port()
    cmd = [sys.executable, "-m", "lora_lightning", "serve", "--adapters", *(f"{n}={p}" for n, p in ckpts.items()),
           "--port", str(port), "--api_key", KEY, "--max_texts", "8", "--max_payload_size", "20000", "--batch_timeout", "0.02"]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).text.strip('"') == "ok":
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the server did not start: {(tmp / 'server.log').read_text()[-3000:]}")
    yield {"url": url, "proc": proc, "ckpts": ckpts, "log": tmp / "server.log"}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def post(server, body, key=KEY, raw=None):
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    return requests.post(f"{server['url']}/predict", data=raw if raw is not None else json.dumps(body), headers=headers,
                         timeout=60)


def expected(server, adapter: str, texts: list[str]) -> torch.Tensor:
    """What the adapter's checkpoint gives alone (probabilities; multi-label: each label's; regression: the value)."""
    from lora_lightning.model import LoRAClassifier

    model = LoRAClassifier.load_from_checkpoint(server["ckpts"][adapter])
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(model.hparams.model_name_or_path)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.task.outputs(model(**batch))


def test_concurrent_clients_mixing_adapters_get_offline_answers(server):
    """16 clients at once, requests of every adapter interleaved (one text, several, every score): each answer equals
    its checkpoint's own outputs within 1e-5, in input order, in pipeline's shape."""
    names = list(server["ckpts"])
    jobs = [(names[i % 4], TEXTS[i % 6: i % 6 + 1 + i % 3], i % 2 == 0) for i in range(48)]
    truth = {n: dict(zip(TEXTS, expected(server, n, TEXTS).tolist())) for n in names}

    def ask(job):
        adapter, texts, many = job
        body = {"adapter": adapter, "texts": texts, "all_scores": True} if many else {"adapter": adapter, "text": texts[0]}
        r = post(server, body)
        assert r.status_code == 200, r.text
        return job, r.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, jobs))
    for (adapter, texts, many), answer in results:
        answers = answer["predictions"] if many else [answer]
        assert len(answers) == (len(texts) if many else 1)
        for text, a in zip(texts, answers):
            want = truth[adapter][text]
            got = [s["score"] for s in a["scores"]] if "scores" in a else [a["score"]]
            if not many and adapter != "score":
                want = [max(want)]
            assert got == pytest.approx(want, abs=1e-5), (adapter, text)
            assert a["truncated"] is False
            if adapter == "emotions":
                assert a["labels"] == [n for n, p in zip(["c0", "c1", "c2"], truth[adapter][text]) if p >= 0.5]
            if adapter == "score":
                assert a["label"] == "score"


def test_bad_requests_are_4xx_and_the_server_goes_on(server):
    cases = [
        ({"adapter": "nope", "text": "x"}, None, 404, "unknown adapter 'nope'; loaded: ['dora', 'emotions', 'plain', 'score']"),
        (None, '{"adapter": "plain", "text": ', 422, "the body is not valid JSON"),
        ({"adapter": "plain"}, None, 422, "give 'text' (one text) or 'texts' (a list), not both or neither"),
        ({"adapter": "plain", "text": 5}, None, 422, "text: Input should be a valid string"),
        ({"adapter": "plain", "text": "   "}, None, 422, "text is empty"),
        ({"adapter": "plain", "texts": ["a"] * 9}, None, 413, "9 texts in one request; at most 8"),
        (None, json.dumps({"adapter": "plain", "text": "x" * 30000}), 413, "bytes; at most 20,000 (--max_payload_size)"),
        ({"adapter": "plain", "text": "x", "colour": 1}, None, 422, "colour: Extra inputs are not permitted"),
    ]
    for body, raw, status, detail in cases:
        r = post(server, body, raw=raw)
        assert r.status_code == status and detail in r.json()["detail"], (body, raw and raw[:40], r.status_code, r.text)
    assert post(server, {"adapter": "plain", "text": "x"}, key=None).status_code == 401
    assert post(server, {"adapter": "plain", "text": "x"}, key="wrong").status_code == 401
    assert post(server, {"adapter": "plain", "text": "still served"}).status_code == 200
    listed = requests.get(f"{server['url']}/adapters", headers={"X-API-Key": KEY}, timeout=10).json()
    by = {a["name"]: a for a in listed["adapters"]}
    assert by["emotions"]["problem_type"] == "multi_label_classification" and by["emotions"]["labels"] == ["c0", "c1", "c2"]
    assert by["dora"]["r"] == [2] and by["plain"]["trainable_params"] == 2 * 2 * (4 * 32 + 32 * 4) + 32 * 2 + 2
    assert all(a["size_bytes"] == Path(server["ckpts"][n]).stat().st_size for n, a in by.items())
    assert requests.get(f"{server['url']}/adapters", timeout=10).status_code == 401


def test_it_says_where_and_stops_on_sigterm(server):
    """The first lines name the address, the adapters and a curl to try; SIGTERM to the whole process group (as
    systemd or a container stops a service) stops it (exit 0), workers too, with no traceback from any of them."""
    text = server["log"].read_text()
    assert f"Serving 4 adapter(s) on " in text and f"at {server['url']}" in text and "curl -s " + server["url"] in text
    proc = server["proc"]
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    text = server["log"].read_text()
    assert "Stopped." in text and "Traceback" not in text and "Error" not in text.split("Stop with Ctrl-C.")[-1], text[-3000:]
    deadline, alive = time.time() + 20, ["?"]
    while alive and time.time() < deadline:  # the workers, and multiprocessing's resource tracker, end after it
        alive = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        time.sleep(0.5)
    assert alive == [], subprocess.run(["ps", "-o", "pid,args", "-g", str(proc.pid)], capture_output=True, text=True).stdout


def test_an_adapter_that_does_not_fit_stops_the_start_in_one_line(tmp_path, tiny_model_dir, tiny_roberta_dir, capsys):
    from lora_lightning.cli import main

    plain = trained(tmp_path, tiny_model_dir, "", "plain", **VARIANTS["plain"])
    assert main(["serve", "--adapters", f"a={plain}", "--model_name_or_path", tiny_roberta_dir]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [next(l for l in errors if l.startswith(f"error: adapter a: {plain}: it was trained on "))], err
    assert "Traceback" not in err
    assert main(["serve", "--adapters", "a"]) == 2
    assert "--adapters 'a': expected NAME=PATH" in capsys.readouterr().err
