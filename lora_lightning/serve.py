"""``python -m lora_lightning serve``: many adapters on one base behind LitServe (Lightning's server).

    python -m lora_lightning serve --adapters sentiment=runs/sst2.ckpt topic=exports/topic-adapter
    curl -s localhost:8000/predict -H 'Content-Type: application/json' -d '{"adapter": "sentiment", "text": "a fine film"}'

Endpoints: ``POST /predict`` with ``{"adapter": NAME, "text": ...}`` (``"text_pair"`` for a pair), or
``{"adapter": NAME, "texts": [...]}`` (strings, or ``[text, pair]`` lists), and ``"all_scores": true`` for every
label's score; answered as transformers' pipeline answers (``label``, ``score``; multi-label ``labels``; regression
the value as ``score``) with ``truncated``: one answer for ``text``, ``{"predictions": [...]}`` in input order for
``texts``. ``GET /adapters`` lists the adapters (labels, problem type, r, trainable parameters, size on disk);
``GET /health`` says ``ok`` once the model is loaded. LitServe batches requests dynamically (``--max_batch_size``,
``--batch_timeout``): rows of many requests, of any adapters, run in one forward (``engine.Engine``).

Every bad request is answered with a 4xx and one ``detail`` line, and the next request is served: an unknown adapter
(404, naming those loaded), JSON that does not parse or fields of the wrong type (422), an empty text or none (422),
more than ``--max_texts`` texts (413), a body over ``--max_payload_size`` (413), a missing or wrong ``X-API-Key``
when ``--api_key`` is set (401). The server binds ``127.0.0.1`` unless ``--host`` says otherwise, and stops on
Ctrl-C or SIGTERM.

LitServe is an optional extra: ``pip install .[serve]``.
"""

# no `from __future__ import annotations`: LitServe and FastAPI read decode_request's annotation as a class
import json
import multiprocessing
import os
import shlex
import signal
import sys

import litserve as ls
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.middleware.base import BaseHTTPMiddleware

from lora_lightning.errors import OptionError

MAX_TEXTS = 64


def parse_adapters(values: list[str] | None) -> dict[str, str]:
    """``["name=path", ...]`` as ``{name: path}``.

    Raises:
        OptionError: none given, an entry without ``=``, a name given twice.
    """
    if not values:
        raise OptionError("--adapters: name at least one adapter, e.g. --adapters sentiment=lightning_logs/sst2/"
                          "version_0/checkpoints/last.ckpt (a checkpoint, or a folder of export --format adapter)")
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise OptionError(f"--adapters {value!r}: expected NAME=PATH (e.g. sentiment=runs/best.ckpt)")
        if name in out:
            raise OptionError(f"--adapters: the name {name!r} is given twice ({out[name]}, {path})")
        out[name.strip()] = path.strip()
    return out


class PredictRequest(BaseModel):
    """The body of ``POST /predict`` (unknown fields, and values of another JSON type, refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    adapter: str
    text: str | None = None
    text_pair: str | None = None
    texts: list[str | list[str]] | None = None
    all_scores: bool = False


class GuardMiddleware(BaseHTTPMiddleware):
    """Before a request is read: 401 without the right ``X-API-Key`` header (when ``api_key`` is set; the health check
    is open, a process manager's probe carries no key), 413 for a declared body (``Content-Length``) over
    ``max_bytes`` (LitServe's own limit still cuts a body sent in chunks)."""

    def __init__(self, app, api_key: str | None, max_bytes: int, open_paths: tuple[str, ...] = ("/health",)) -> None:
        super().__init__(app)
        self.api_key, self.max_bytes, self.open_paths = api_key, max_bytes, open_paths

    async def dispatch(self, request, call_next):
        if self.api_key is not None and request.url.path not in self.open_paths \
                and request.headers.get("X-API-Key") != self.api_key:
            return JSONResponse(status_code=401, content={"detail": "missing or wrong X-API-Key header"})
        size = request.headers.get("Content-Length", "")
        if size.isdigit() and int(size) > self.max_bytes:
            return JSONResponse(status_code=413, content={"detail": f"the body has {int(size):,} bytes; at most "
                                                                    f"{self.max_bytes:,} (--max_payload_size)"})
        return await call_next(request)


class AdapterAPI(ls.LitAPI):
    """``POST /predict`` on an ``engine.Engine`` that the inference worker loads (``setup``).

    Args:
        model_name_or_path: the base.
        adapters: ``{name: path}``.
        max_texts: texts per request at most.
        max_batch_size, batch_timeout: LitServe's dynamic batching (requests per forward; seconds to fill one).
    """

    def __init__(self, model_name_or_path: str, adapters: dict[str, str], max_texts: int = MAX_TEXTS,
                 max_batch_size: int = 16, batch_timeout: float = 0.01) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_name_or_path, self.adapters, self.max_texts = model_name_or_path, adapters, max_texts

    def setup(self, device) -> None:
        from lora_lightning.callbacks import interactive
        from lora_lightning.engine import Engine

        if not interactive():  # this worker is a process of its own: quiet as the command line is (cli.quiet_for_files)
            import transformers

            transformers.utils.logging.disable_progress_bar()

        self.engine = Engine(self.model_name_or_path, device=device if str(device).startswith("cuda") else "cpu")
        for name, path in self.adapters.items():
            self.engine.add(name, path)

    def decode_request(self, request: PredictRequest):
        """A request's rows (``engine.Row``), checked: 404 for an unknown adapter, 413 for too many texts, 422 for
        no text, an empty one, or a malformed pair."""
        from lora_lightning.engine import Row

        if request.adapter not in self.adapters:
            raise HTTPException(status_code=404, detail=f"unknown adapter {request.adapter!r}; loaded: {sorted(self.adapters)}")
        if (request.text is None) == (request.texts is None):
            raise HTTPException(status_code=422, detail="give 'text' (one text) or 'texts' (a list), not both or neither")
        if request.texts is not None and len(request.texts) > self.max_texts:
            raise HTTPException(status_code=413, detail=f"{len(request.texts)} texts in one request; at most {self.max_texts}")
        if request.text is not None:
            items = [(request.text, request.text_pair)]
        elif request.text_pair is not None:
            raise HTTPException(status_code=422, detail="'text_pair' goes with 'text'; in 'texts' give [text, pair] lists")
        else:
            items = [(t, None) if isinstance(t, str) else tuple(t) for t in request.texts]
        rows = []
        for i, item in enumerate(items):
            where = "text" if request.text is not None else f"texts[{i}]"
            if len(item) != 2:
                raise HTTPException(status_code=422, detail=f"{where}: expected a text or a [text, pair] list of 2")
            if not item[0].strip() or (item[1] is not None and not item[1].strip()):
                raise HTTPException(status_code=422, detail=f"{where} is empty")
            rows.append(Row(request.adapter, item[0], item[1], request.all_scores))
        if not rows:
            raise HTTPException(status_code=422, detail="'texts' is empty")
        return rows, request.text is not None

    def batch(self, inputs):
        return inputs

    def predict(self, requests):
        """The rows of every request of the batch in one ``Engine.predict``, answers handed back per request."""
        answers = self.engine.predict([row for rows, _ in requests for row in rows])
        out, start = [], 0
        for rows, single in requests:
            out.append((answers[start:start + len(rows)], single))
            start += len(rows)
        return out

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        answers, single = output
        return answers[0] if single else {"predictions": answers}


def one_line_errors(app) -> None:
    """FastAPI's request validation errors (JSON that does not parse, a field of the wrong type, one too many) as one
    ``detail`` line, status 422."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestValidationError)
    async def _one_line(request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            detail = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        else:
            detail = f"{where or 'body'}: {first.get('msg', 'invalid')}"
        return JSONResponse(status_code=422, content={"detail": detail})


def serve(adapters: dict[str, str], model_name_or_path: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          max_batch_size: int = 16, batch_timeout: float = 0.01, max_texts: int = MAX_TEXTS,
          max_payload_size: int = 1_000_000, api_key: str | None = None, accelerator: str = "auto", timeout: float = 30.0) -> None:
    """Check every adapter against the base (one line naming the file if one does not fit), then serve until Ctrl-C
    or SIGTERM.

    Args:
        adapters: ``{name: path}``: checkpoints or PEFT export folders, all of one base.
        model_name_or_path: the base; ``None``: the first adapter's.
        host, port: where to listen (``127.0.0.1``: this machine only).
        max_batch_size: requests per forward (LitServe's dynamic batching).
        batch_timeout: seconds a batch waits to fill.
        max_texts: texts per request at most.
        max_payload_size: the largest body, in bytes (1,000,000).
        api_key: required as the ``X-API-Key`` header when set (also from ``$LORA_LIGHTNING_API_KEY``).

    Raises:
        OptionError, CheckpointError: a bad option or adapter, before the server starts.
    """
    from lora_lightning.adapters import read_adapter
    from lora_lightning.engine import Engine

    if max_texts < 1 or max_batch_size < 1 or batch_timeout < 0:
        raise OptionError(f"--max_texts and --max_batch_size must be >= 1 and --batch_timeout >= 0, got {max_texts}, "
                          f"{max_batch_size}, {batch_timeout}")
    api_key = api_key or os.environ.get("LORA_LIGHTNING_API_KEY")
    first = next(iter(adapters.items()))
    model_name_or_path = model_name_or_path or read_adapter(*first)[1].base
    check = Engine(model_name_or_path)  # every adapter checked here, before a worker starts: one line each
    infos = [check.add(name, path).public() for name, path in adapters.items()]
    memory = dict(check.memory)
    del check
    api = AdapterAPI(model_name_or_path, adapters, max_texts, max_batch_size, batch_timeout)
    guard = (GuardMiddleware, {"api_key": api_key, "max_bytes": max_payload_size})
    server = ls.LitServer(api, accelerator=accelerator, timeout=timeout, max_payload_size=max_payload_size,
                          middlewares=[guard])
    one_line_errors(server.app)

    @server.app.get("/adapters")
    async def list_adapters():
        return {"base": model_name_or_path, "adapters": [{**i, "memory_bytes": memory[i["name"]]} for i in infos]}

    key = " -H 'X-API-Key: ...'" if api_key else ""
    example = json.dumps({"adapter": infos[0]["name"], "text": "a fine, funny film"})
    lines = [f"Serving {len(infos)} adapter(s) on {model_name_or_path} at http://{host}:{port}"]
    lines += [f"  {i['name']}: {i['problem_type']}, labels {i['labels']}, r={i['r']}, {i['size_bytes'] / 1e6:.2f} MB"
              for i in infos]
    lines += ["Try:", f"  curl -s http://{host}:{port}/predict -H 'Content-Type: application/json'{key} -d {shlex.quote(example)}",
              "Stop with Ctrl-C."]
    print("\n".join(lines), flush=True)

    main = os.getpid()

    def stop(signum, frame):
        """SIGTERM (a process manager's stop) shuts down as Ctrl-C does. LitServe's worker processes are forked
        and inherit this handler: they exit quietly (no traceback per worker); the main process stops them."""
        if os.getpid() != main:
            if multiprocessing.current_process().name.startswith("SyncManager"):
                return  # the queues' manager: the main process shuts it down after the workers
            os._exit(0)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(host=host, port=port, generate_client_file=False, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("Stopped.", flush=True)


def serve_main(args: list[str] | None = None) -> None:
    """``python -m lora_lightning serve ...``: its options (jsonargparse; ``--config`` a YAML of them)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lora_lightning.errors import OneLineErrors

    class ServeParser(OneLineErrors, ArgumentParser):
        pass

    parser = ServeParser(prog="python -m lora_lightning serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML of these options (adapters: [name=path, ...])")
    parser.add_argument("--adapters", type=str, nargs="+", help="NAME=PATH ...: checkpoints or export --format adapter folders")
    parser.add_argument("--model_name_or_path", type=str, default=None, help="the base (default: the adapters')")
    parser.add_argument("--host", type=str, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch_size", type=int, default=16, help="requests per forward")
    parser.add_argument("--batch_timeout", type=float, default=0.01, help="seconds a batch waits to fill")
    parser.add_argument("--max_texts", type=int, default=MAX_TEXTS, help="texts per request at most")
    parser.add_argument("--max_payload_size", type=int, default=1_000_000, help="the largest body, in bytes")
    parser.add_argument("--api_key", type=str, default=None, help="required X-API-Key (or $LORA_LIGHTNING_API_KEY)")
    parser.add_argument("--accelerator", type=str, default="auto")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait")
    a = parser.parse_args(args if args is not None else sys.argv[1:])
    options = {k: v for k, v in vars(a).items() if k not in ("config", "adapters", "__path__")}
    serve(parse_adapters(a.adapters), **options)
