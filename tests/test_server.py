"""sim.server (serrano serve): a real server on 127.0.0.1 (uvicorn in a thread) with a tiny BERT
on the golden backend, driven over HTTP: concurrent requests all answered, embeddings equal to
``model.embed`` of the same texts, bad requests answered with their 4xx and the server still
healthy, a full queue (429) and queue timeouts (503) exactly when the policy says, /metrics in
the Prometheus text format with figures that add up. Every wait has a timeout."""

import base64
import concurrent.futures
import socket
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from serrano.sim.batcher import BatchPolicy, LinearService
from serrano.sim.model import load_model
from serrano.sim.server import create_app

from test_model import CALIBRATION, TEXTS, WORDS, _tiny_dir

WAIT = 20.0          # seconds: the longest any step may take before the test fails
SERVICE = LinearService(a=1000, b=50)


class _Server:
    """uvicorn serving ``app`` on a free port of 127.0.0.1 in a thread."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        # (no websockets: nothing here uses them, and their import may warn)
        config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not shut down in time"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    _tiny_dir(path, seed=5)
    return path


@pytest.fixture(scope="module")
def served(tiny):
    """A server with a batching policy, and a separate model instance for the expected
    embeddings (the server's model belongs to its worker thread)."""
    model = load_model(tiny, backend="golden", calibration=CALIBRATION)
    policy = BatchPolicy(max_batch_requests=4, max_queue_delay=0.05, max_queue_length=64)
    app = create_app(model, name="tiny", policy=policy, service_cycles=SERVICE, mhz=100.0)
    with _Server(app) as srv, httpx.Client(base_url=srv.url, timeout=WAIT) as client:
        yield client, load_model(tiny, backend="golden", calibration=CALIBRATION)


def _metrics(client) -> dict:
    """/metrics parsed by prometheus_client: {sample name with labels: value}."""
    from prometheus_client.parser import text_string_to_metric_families
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            key = s.name + "".join(f"[{k}={v}]" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


def test_concurrent_requests_batched_and_exact(served):
    client, ref = served
    before = _metrics(client)
    rng = np.random.default_rng(0)
    jobs = [list(rng.choice(TEXTS, size=int(rng.integers(1, 4)))) for _ in range(12)]
    jobs[0] = TEXTS[0]                       # one plain string

    def post(inp):
        return client.post("/v1/embeddings", json={"input": inp, "model": "tiny"})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, jobs, timeout=WAIT))
    for inp, r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        body = r.json()
        texts = [inp] if isinstance(inp, str) else inp
        assert body["object"] == "list" and body["model"] == "tiny"
        assert [d["index"] for d in body["data"]] == list(range(len(texts)))
        assert all(d["object"] == "embedding" for d in body["data"])
        got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        assert np.array_equal(got, ref.embed(texts))          # batching changes nothing
        n = int(ref.tokenize(texts)[1].sum())
        assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}
    after = _metrics(client)
    d = {k: after[k] - before.get(k, 0) for k in after}
    inputs = sum(1 if isinstance(j, str) else len(j) for j in jobs)
    tokens = sum(int(ref.tokenize([j] if isinstance(j, str) else j)[1].sum()) for j in jobs)
    assert d["serrano_http_requests_total[code=200]"] == 12
    assert d["serrano_inputs_total"] == inputs and d["serrano_tokens_total"] == tokens
    batches = d["serrano_batches_total"]
    assert d["serrano_batch_size_count"] == batches and d["serrano_batch_size_sum"] == inputs
    assert batches < inputs                  # concurrent inputs shared batches
    assert d["serrano_batch_size_bucket[le=4]"] == batches      # the policy's maximum
    # Device time from the service model (packed): 1000 cycles a batch + 50 a token.
    assert d["serrano_device_cycles_total"] == 1000 * batches + 50 * tokens
    assert d["serrano_device_seconds_total"] == pytest.approx(
        (1000 * batches + 50 * tokens) / 100e6)
    assert d["serrano_input_device_seconds_count"] == inputs
    assert after["serrano_modeled_energy_joules_total"] > before.get(
        "serrano_modeled_energy_joules_total", 0)
    q = after["serrano_input_device_seconds[quantile=0.99]"]
    assert 1000 / 100e6 <= q <= (1000 + 50 * 4 * ref.max_tokens) / 100e6


def test_base64_models_and_health(served):
    client, ref = served
    r = client.post("/v1/embeddings", json={"input": ["a dog ran"],
                                            "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    e = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(e, ref.embed(["a dog ran"])[0])
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"


@pytest.mark.parametrize("body, status, needle", [
    ({"input": ""}, 400, "input[0] is empty"),
    ({"input": []}, 400, "empty list"),
    ({"input": 5}, 400, "a string or a list of strings, not int"),
    ({"input": [1, 2, 3]}, 400, "token ids are not supported"),
    ({"input": ["the cat", None]}, 400, "input[1] must be a string, not NoneType"),
    ({"model": "tiny"}, 400, "'input' is required"),
    ({"input": "the cat", "model": "gpt-4"}, 404, "'gpt-4' does not exist"),
    ({"input": "the cat", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "the cat", "dimensions": 8}, 400, "32 dimensions"),
    ({"input": " ".join(WORDS * 2)}, 400,            # (with [CLS] and [SEP])
     f"has {2 * len(WORDS) + 2} tokens; this model takes at most 40"),
    ({"input": "the cat", "priority": -1}, 400, "priority must be a non-negative integer"),
    ("not json", 400, "not valid JSON"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(served, body, status, needle):
    client, ref = served
    if isinstance(body, str):
        r = client.post("/v1/embeddings", content=body,
                        headers={"content-type": "application/json"})
    else:
        r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    assert client.get("/health").json()["status"] == "ok"
    ok = client.post("/v1/embeddings", json={"input": "the cat"})
    assert ok.status_code == 200
    assert np.array_equal(np.float32(ok.json()["data"][0]["embedding"]),
                          ref.embed(["the cat"])[0])


class _Gated:
    """The model, with ``embed`` held until the test opens the gate (to fill the queue)."""

    def __init__(self, model):
        self._model = model
        self.gate, self.entered = threading.Event(), threading.Event()
        self.seen = []                       # the batches' texts, in the order they ran

    def __getattr__(self, name):
        return getattr(self._model, name)

    def embed(self, texts, batch_size=8):
        self.seen.append(list(texts))
        self.entered.set()
        assert self.gate.wait(WAIT), "the gate was never opened"
        return self._model.embed(texts, batch_size=batch_size)


def test_full_queue_429_and_timeouts_503(tiny):
    model = _Gated(load_model(tiny, backend="golden", calibration=CALIBRATION))
    policy = BatchPolicy(max_batch_requests=1, max_queue_length=2, timeout=0.5,
                         max_batch_tokens=8)
    app = create_app(model, name="tiny", policy=policy, service_cycles=SERVICE)
    with _Server(app) as srv, httpx.Client(base_url=srv.url, timeout=WAIT) as client, \
            concurrent.futures.ThreadPoolExecutor(3) as pool:
        post = lambda text: client.post("/v1/embeddings", json={"input": text})
        first = pool.submit(post, "the cat")             # taken at once, held in embed
        assert model.entered.wait(WAIT)
        t0 = time.monotonic()
        queued = [pool.submit(post, "a dog"), pool.submit(post, "the sun")]
        deadline = time.monotonic() + WAIT
        while client.get("/health").json()["queue_length"] < 2:
            assert time.monotonic() < deadline, "the two requests never queued"
            time.sleep(0.01)
        full = post("the moon")                          # 2 waiting: the queue is full
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        two = client.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
        assert two.status_code == 429                    # all or none
        for f in queued:                                 # a batch is running: they time out
            r = f.result(timeout=WAIT)
            assert r.status_code == 503 and r.json()["error"]["code"] == "timeout"
        assert 0.45 <= time.monotonic() - t0 < WAIT
        assert not first.done()                          # still held
        # An input longer than max_batch_tokens: 400, and its short companion is not queued.
        long = client.post("/v1/embeddings", json={"input": ["the cat", TEXTS[2]]})
        assert long.status_code == 400 and long.json()["error"]["code"] == "input_too_long"
        assert "9 tokens exceeds max_batch_tokens (8)" in long.json()["error"]["message"]
        assert client.get("/health").json()["queue_length"] == 0
        model.gate.set()
        assert first.result(timeout=WAIT).status_code == 200
        assert client.get("/health").json()["status"] == "ok"
        assert post("the sun").status_code == 200        # and it keeps serving
        m = _metrics(client)
        assert m["serrano_timeouts_total"] == 2 and m["serrano_rejected_total"] == 4
        assert m["serrano_http_requests_total[code=429]"] == 2
        assert m["serrano_http_requests_total[code=503]"] == 2
        assert m["serrano_http_requests_total[code=200]"] == 2
        assert m["serrano_http_requests_total[code=400]"] == 1
        assert m["serrano_inputs_total"] == 2


def test_priorities_over_http(tiny):
    model = _Gated(load_model(tiny, backend="golden", calibration=CALIBRATION))
    app = create_app(model, name="tiny", policy=BatchPolicy(max_batch_requests=1))
    with _Server(app) as srv, httpx.Client(base_url=srv.url, timeout=WAIT) as client, \
            concurrent.futures.ThreadPoolExecutor(3) as pool:
        post = lambda text, pr: client.post("/v1/embeddings",
                                            json={"input": text, "priority": pr})
        first = pool.submit(post, "the cat", 0)          # held in embed
        assert model.entered.wait(WAIT)
        low = pool.submit(post, "a dog", 5)
        deadline = time.monotonic() + WAIT
        while client.get("/health").json()["queue_length"] < 1:
            assert time.monotonic() < deadline, "the request never queued"
            time.sleep(0.01)
        high = pool.submit(post, "the sun", 0)           # arrives later, served first
        while client.get("/health").json()["queue_length"] < 2:
            assert time.monotonic() < deadline, "the request never queued"
            time.sleep(0.01)
        model.gate.set()
        assert all(f.result(timeout=WAIT).status_code == 200 for f in (first, low, high))
    assert model.seen == [["the cat"], ["the sun"], ["a dog"]]


def test_serve_command_reports_a_rejected_config_cleanly(tiny, capsys, monkeypatch):
    """--rows/--cols: an accelerator the model rejects is an error at startup, not a crash."""
    from serrano.commands import serve

    def no_server(*args, **kwargs):       # (a startup that gets this far would serve forever)
        raise AssertionError("serve.main started a server")
    monkeypatch.setattr(uvicorn, "run", no_server)
    assert serve.main(["--model", str(tiny), "--rows", "16", "--cols", "8",
                       "--max-batch", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "square array" in err
    assert serve.main(["--model", str(tiny), "--rows", "3", "--cols", "3"]) == 2
    assert "multiple of" in capsys.readouterr().err
    assert serve.main(["--model", str(tiny / "missing")]) == 2
    assert "is not a model directory" in capsys.readouterr().err
    assert serve.main(["--model", str(tiny), "--service", "cycle-model"]) == 2
    assert "cycle-model:PATH" in capsys.readouterr().err
    # A cycle model of another encoder is refused; one of this one is taken.
    from serrano.sim.cycle_model import IO_FEATURES, LAYER_FEATURES, CycleModel
    for layers, ok in ((6, False), (2, True)):
        cm = CycleModel(lanes=8, mem_width=8, hidden=32, heads=2, intermediate=64,
                        layers=layers, a=0, b=0, calibrated_on=[],
                        coef=dict.fromkeys(LAYER_FEATURES + IO_FEATURES, 1.0))
        cm.save(tiny / f"cm{layers}.json")
        args = serve.parser().parse_args(["--model", str(tiny), "--service",
                                          f"cycle-model:{tiny / f'cm{layers}.json'}"])
        if ok:
            assert serve.build(args)[0] is not None
        else:
            with pytest.raises(ValueError, match="is not of this accelerator and model"):
                serve.build(args)
    # An accepted shape builds an app without running anything.
    for side in (8, 16):
        args = serve.parser().parse_args(["--model", str(tiny), "--rows", str(side), "--cols",
                                          str(side), "--max-batch", "2",
                                          "--service", "linear:1000,50"])
        app, name, policy = serve.build(args)
        assert name == tiny.name and policy.max_batch_requests == 2

class _Failing:
    """The model, with ``embed`` raising for a batch that holds the text "boom"."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def embed(self, texts, batch_size=8):
        if "boom" in texts:
            raise RuntimeError("the simulated chip faulted")
        return self._model.embed(texts, batch_size=batch_size)


def test_a_failing_batch_gets_500_and_the_server_keeps_serving(tiny):
    model = _Failing(load_model(tiny, backend="golden", calibration=CALIBRATION))
    app = create_app(model, name="tiny", policy=BatchPolicy(max_batch_requests=1))
    with _Server(app) as srv, httpx.Client(base_url=srv.url, timeout=WAIT) as client:
        r = client.post("/v1/embeddings", json={"input": "boom"})
        assert r.status_code == 500
        assert r.json()["error"] == {"message": "the accelerator failed on this batch: "
                                                "RuntimeError: the simulated chip faulted",
                                     "type": "server_error", "param": None, "code": None}
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/v1/embeddings", json={"input": "the cat"}).status_code == 200
        m = _metrics(client)
        assert m["serrano_failed_batches_total"] == 1 and m["serrano_batches_total"] == 1
