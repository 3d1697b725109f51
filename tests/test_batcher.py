"""sim.batcher: the dynamic batcher's policies against a fake clock (the queue delay is never
exceeded, preferred sizes are taken, timeouts and rejections happen exactly when they should,
priorities are honoured, every request is answered once), the discrete-event simulation on a
hand-checked trace, and the load test (serrano loadtest) end to end."""

import csv
import json
import math

import numpy as np
import pytest

from serrano.sim.batcher import (Arrival, Batcher, BatchPolicy, Lengths, LinearService,
                                 QueueFull, RequestTooLarge, poisson_arrivals, read_trace,
                                 simulate)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- the policy ----------------------------------------------------------------------------
def test_policy_validates_up_front():
    with pytest.raises(ValueError, match=r"^max_batch_requests must be a positive integer, "
                                         r"not 0$"):
        BatchPolicy(max_batch_requests=0)
    with pytest.raises(ValueError, match="max_queue_delay must be a non-negative number"):
        BatchPolicy(max_queue_delay=-1.0)
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds or "
                                         "None, not 0"):
        BatchPolicy(timeout=0)
    with pytest.raises(ValueError, match="preferred batch size 16 exceeds max_batch_requests"):
        BatchPolicy(max_batch_requests=8, preferred_batch_sizes=(4, 16))
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive integer or None"):
        BatchPolicy(max_batch_tokens=2.5)
    with pytest.raises(TypeError):
        BatchPolicy(8)                               # keyword-only
    p = BatchPolicy.from_spec("max_batch_requests=16,max_queue_delay=2ms,"
                              "preferred_batch_sizes=8/4,padded=true,timeout=none")
    assert p == BatchPolicy(max_batch_requests=16, max_queue_delay=0.002,
                            preferred_batch_sizes=(4, 8), padded=True)
    with pytest.raises(ValueError, match="bad policy item 'batch=3'"):
        BatchPolicy.from_spec("batch=3")
    # Padded: the longest rounded up to the block, for every request; one request alone is
    # not padded.
    assert p.device_lengths([5, 11, 3]) == (11, 11, 11) and p.device_lengths([11]) == (11,)
    blocks = BatchPolicy(padded=True, pad_block=8)     # (rounded up to whole token blocks)
    assert blocks.device_lengths([5, 11, 3]) == (16, 16, 16)
    assert BatchPolicy().device_lengths([5, 11]) == (5, 11)


# ---- the batcher on a fake clock -----------------------------------------------------------
def _drain(batcher, now):
    """Every batch the batcher offers at ``now`` (as if replicas were always free)."""
    out = []
    while (b := batcher.poll(now)) is not None:
        out.append(b)
    return out


def test_queue_delay_is_waited_for_and_never_exceeded():
    """With a replica always free, a batch that is not full leaves exactly when its oldest
    request has waited max_queue_delay, and no request ever waits longer."""
    delay = 0.010
    policy = BatchPolicy(max_batch_requests=4, max_queue_delay=delay)
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.exponential(0.004, 300))
    b = Batcher(policy)
    dispatched, i, now = {}, 0, 0.0
    batches = []
    while i < len(times) or len(b):
        # The next instant anything can happen: an arrival or the batcher's wake time.
        wake = b.wake_time(now)
        nxt = min(times[i] if i < len(times) else math.inf, math.inf if wake is None else wake)
        now = max(now, nxt)
        while i < len(times) and times[i] <= now:       # (then times[i] == now)
            b.submit(i, 10, float(times[i]))
            i += 1
        for batch in _drain(b, now):
            batches.append(batch)
            for r in batch.requests:
                dispatched[r.id] = now
            b.complete(batch.id)
    assert sorted(dispatched) == list(range(len(times)))
    waits = np.array([dispatched[k] - times[k] for k in range(len(times))])
    assert waits.max() <= delay + 1e-12
    for batch in batches:
        oldest = min(r.arrival for r in batch.requests)
        if batch.size < 4:           # not full: sent at the end of the delay, not before
            assert batch.formed == pytest.approx(oldest + delay, abs=1e-12)
        else:                        # full: sent when its last request arrived
            assert batch.formed == max(r.arrival for r in batch.requests)
    assert {bt.size for bt in batches} > {1, 4}       # both cases happened
    b.check()
    assert b.counts["done"] == len(times)


def test_preferred_sizes_are_taken():
    b = Batcher(BatchPolicy(max_batch_requests=8, max_queue_delay=1.0,
                            preferred_batch_sizes=(2, 4)))
    for k in range(3):
        b.submit(k, 5, 0.0)
    assert b.poll(0.0) is None                # 3 queued: no preferred size of 4 yet
    assert b.wake_time(0.0) == 1.0            # the delay of the oldest
    b.submit(3, 5, 0.1)
    batch = b.poll(0.1)                       # 4 = the largest preferred: sent at once
    assert batch.size == 4 and [r.id for r in batch.requests] == [0, 1, 2, 3]
    for k in range(4, 7):
        b.submit(k, 5, 0.2)
    assert b.poll(1.19) is None
    batch = b.poll(1.2)                       # delay expired with 3: cut to preferred 2
    assert [r.id for r in batch.requests] == [4, 5]
    batch = b.poll(1.2)                       # the rest (its delay has expired too)
    assert [r.id for r in batch.requests] == [6]
    assert b.poll(1.2) is None


def test_token_limit_ends_a_batch_and_oversized_requests_are_refused():
    b = Batcher(BatchPolicy(max_batch_requests=8, max_batch_tokens=20, max_queue_delay=5.0))
    b.submit("a", 8, 0.0)
    b.submit("b", 8, 0.0)
    assert b.poll(0.0) is None                # 16 tokens: room for more
    b.submit("c", 8, 0.0)                     # 24 > 20: the batch is full, sent now
    assert [r.id for r in b.poll(0.0).requests] == ["a", "b"]
    with pytest.raises(RequestTooLarge, match="21 tokens exceeds max_batch_tokens"):
        b.submit("d", 21, 0.0)
    assert b.outcomes["d"] == "rejected"
    padded = Batcher(BatchPolicy(max_batch_requests=8, max_batch_tokens=32, padded=True,
                                 pad_block=8, max_queue_delay=5.0))
    padded.submit(0, 3, 0.0)
    padded.submit(1, 9, 0.0)                  # 2 x 16 = 32 device tokens: fits
    padded.submit(2, 1, 0.0)                  # 3 x 16 = 48: does not
    batch = padded.poll(0.0)
    assert batch.size == 2 and batch.device_lengths == (16, 16) and batch.tokens == 32


def test_timeouts_happen_exactly_at_the_deadline():
    b = Batcher(BatchPolicy(max_batch_requests=1, timeout=1.0))
    b.submit("x", 4, 0.0)
    b.submit("y", 4, 0.25, timeout=0.5)       # its own timeout: deadline 0.75
    b.submit("z", 4, 0.5)
    assert b.next_deadline() == 0.75
    assert b.expire(0.7499) == []
    assert [r.id for r in b.expire(0.75)] == ["y"]
    assert b.outcomes["y"] == "timeout"
    assert b.expire(0.99) == []
    assert [r.id for r in b.poll(0.99).requests] == ["x"]   # dispatched before 1.0: kept
    assert b.expire(1.49) == []
    assert b.poll(1.5) is None                # z's deadline is 1.5: timed out, not sent
    assert [r.id for r in b.expire(1.5)] == ["z"]
    b.complete(1)
    b.check()
    assert b.counts == {"done": 1, "failed": 0, "timeout": 2, "rejected": 0}


def test_rejections_exactly_when_the_queue_is_full():
    b = Batcher(BatchPolicy(max_batch_requests=2, max_queue_length=3))
    for k in range(3):
        b.submit(k, 4, 0.0)
    assert b.free_slots == 0
    with pytest.raises(QueueFull, match="3 requests waiting"):
        b.submit(3, 4, 0.0)
    batch = b.poll(0.1)                       # two leave the queue: two slots free
    assert b.free_slots == 2
    b.submit(4, 4, 0.1)
    b.submit(5, 4, 0.1)
    with pytest.raises(QueueFull):
        b.submit(6, 4, 0.1)
    b.complete(batch.id)
    assert b.outcomes == {3: "rejected", 6: "rejected", 0: "done", 1: "done"}
    # An id that is live cannot be submitted again; time cannot go backwards.
    with pytest.raises(ValueError, match="already queued"):
        b.submit(4, 4, 0.2)
    with pytest.raises(ValueError, match="answered already"):
        b.submit(3, 4, 0.2)
    with pytest.raises(ValueError, match="time went backwards"):
        b.poll(0.05)


def test_priorities_are_honoured():
    b = Batcher(BatchPolicy(max_batch_requests=2))
    b.submit("low1", 4, 0.0, priority=2)
    b.submit("low2", 4, 0.1, priority=2)
    b.submit("high", 4, 0.2, priority=0)
    b.submit("mid", 4, 0.3, priority=1)
    assert [r.id for r in b.poll(0.4).requests] == ["high", "mid"]
    assert [r.id for r in b.poll(0.4).requests] == ["low1", "low2"]


def test_each_request_answered_once():
    b = Batcher(BatchPolicy(max_batch_requests=3))
    for k in range(3):
        b.submit(k, 4, 0.0)
    batch = b.poll(0.0)
    with pytest.raises(ValueError, match="do not match its requests"):
        b.complete(batch.id, {0: "a", 1: "b"})
    got = b.complete(batch.id, {2: "c", 1: "b", 0: "a"})
    assert [(r.id, v) for r, v in got] == [(0, "a"), (1, "b"), (2, "c")]
    with pytest.raises(RuntimeError, match="not in flight"):
        b.complete(batch.id)
    b.check()


def test_random_workload_answers_everything_once():
    """Overload with timeouts, a queue limit, priorities and two replicas: every request is
    answered exactly once, and the outcomes agree with the times recorded."""
    rng = np.random.default_rng(3)
    arrivals = [Arrival(time=float(t), tokens=int(n), priority=int(p))
                for t, n, p in zip(np.cumsum(rng.exponential(2e-5, 800)),
                                   rng.integers(1, 40, 800), rng.integers(0, 3, 800))]
    policy = BatchPolicy(max_batch_requests=6, max_batch_tokens=120, max_queue_delay=2e-4,
                         max_queue_length=40, timeout=1e-3)
    res = simulate(arrivals, policy, lambda ls: 20_000 + 400 * sum(ls), mhz=100.0,
                   replicas=2)
    s = res.summary()
    assert s["completed"] + s["timeouts"] + s["rejected"] == 800
    assert s["completed"] and s["timeouts"] and s["rejected"]        # all three happened
    done = res.done
    assert np.all(np.isnan(res.finish[~done])) and not np.isnan(res.finish[done]).any()
    assert np.all(res.queue < 1e-3)                         # dispatched in time
    assert int(res.batch_size.sum()) == s["completed"]
    for k in range(len(res.batch_size)):                             # batches match requests
        members = np.flatnonzero(res.batch == k)
        assert len(members) == res.batch_size[k]
        assert res.tokens[members].sum() <= 120
        assert np.all(res.dispatch[members] == res.batch_start[k])


# ---- the discrete-event simulation ---------------------------------------------------------
TRACE = [Arrival(time=0.0, tokens=10), Arrival(time=0.0005, tokens=10),
         Arrival(time=0.001, tokens=20), Arrival(time=0.0045, tokens=5)]


def _service(lengths):
    return 1000 + 100 * sum(lengths)          # at 1 MHz: 1 ms + 0.1 ms per token


def test_des_hand_checked_trace():
    """One replica, max batch 4, no delay. t=0: [0] (10 tokens, 2 ms) until 2 ms; 1 and 2
    arrive meanwhile and leave together at 2 ms (30 tokens: 4 ms) until 6 ms; 3 arrives at
    4.5 ms and leaves at 6 ms (5 tokens: 1.5 ms) until 7.5 ms."""
    res = simulate(TRACE, BatchPolicy(max_batch_requests=4), _service, mhz=1.0)
    np.testing.assert_allclose(res.dispatch, [0, 0.002, 0.002, 0.006], atol=1e-12)
    np.testing.assert_allclose(res.finish, [0.002, 0.006, 0.006, 0.0075], atol=1e-12)
    np.testing.assert_allclose(res.queue, [0, 0.0015, 0.001, 0.0015], atol=1e-12)
    np.testing.assert_allclose(res.compute, [0.002, 0.004, 0.004, 0.0015], atol=1e-12)
    np.testing.assert_allclose(res.latency, [0.002, 0.0055, 0.005, 0.003], atol=1e-12)
    assert list(res.batch_size) == [1, 2, 1] and list(res.batch_tokens) == [10, 30, 5]
    assert list(res.batch_cycles) == [2000, 4000, 1500]
    s = res.summary()
    assert s["throughput"] == pytest.approx(4 / 0.0075)
    assert s["utilization"] == pytest.approx(0.0075 / 0.0075)
    assert s["batch_sizes"] == {1: 2, 2: 1}
    # Without batching: 0 until 2 ms, 1 until 4 ms (2 ms), 2 until 7 ms (3 ms), 3 until 8.5.
    off = simulate(TRACE, BatchPolicy(max_batch_requests=1), _service, mhz=1.0)
    np.testing.assert_allclose(off.finish, [0.002, 0.004, 0.007, 0.0085], atol=1e-12)


def test_des_two_replicas_padding_energy_and_timeouts():
    # Two replicas: 0 on r0 until 2 ms, 1 on r1 (0.5 ms) until 2.5, 2 on r0 at 2 ms
    # (20 tokens: 3 ms) until 5, 3 on r1 at 4.5 until 6.
    res = simulate(TRACE, BatchPolicy(max_batch_requests=4), _service, mhz=1.0, replicas=2,
                   energy=lambda ls: 1e-6 * sum(ls))
    np.testing.assert_allclose(res.dispatch, [0, 0.0005, 0.002, 0.0045], atol=1e-12)
    np.testing.assert_allclose(res.finish, [0.002, 0.0025, 0.005, 0.006], atol=1e-12)
    assert list(res.replica) == [0, 1, 0, 1]
    assert res.summary()["energy_per_request"] == pytest.approx(45e-6 / 4)
    # Padded: batch [1, 2] is 2 x 24 device tokens (1000 + 4800 cycles).
    pad = simulate(TRACE, BatchPolicy(max_batch_requests=4, padded=True, pad_block=8),
                   _service, mhz=1.0)
    assert list(pad.batch_tokens) == [10, 48, 5] and pad.batch_cycles[1] == 5800
    # A timeout of 1.2 ms on request 1: still queued at 1.7 ms, so it times out then;
    # 2 goes alone at 2 ms.
    trace = list(TRACE)
    trace[1] = Arrival(time=0.0005, tokens=10, timeout=0.0012)
    res = simulate(trace, BatchPolicy(max_batch_requests=4), _service, mhz=1.0)
    assert list(res.outcome) == ["done", "timeout", "done", "done"]
    np.testing.assert_allclose(res.finish[[0, 2, 3]], [0.002, 0.005, 0.0065], atol=1e-12)


def test_batching_reaches_the_capacity_the_service_model_implies():
    """Far past saturation every batch is full, so the throughput is max_batch requests per
    service time of a full batch (computed from the service model, not hard-coded)."""
    service = LinearService(a=200_000, b=5_000)
    arrivals = poisson_arrivals(20_000.0, 2000, Lengths.fixed(16), seed=5)
    for size in (1, 8):
        s = simulate(arrivals, BatchPolicy(max_batch_requests=size), service, mhz=150.0
                     ).summary()
        capacity = size / (service([16] * size) / 150e6)
        assert s["throughput"] == pytest.approx(capacity, rel=0.01)
        assert s["utilization"] == pytest.approx(1.0, rel=0.01)


def test_arrivals_and_traces(tmp_path):
    a = poisson_arrivals(1000.0, 5000, Lengths.uniform(3, 9), seed=11)
    assert a == poisson_arrivals(1000.0, 5000, Lengths.uniform(3, 9), seed=11)
    gaps = np.diff([x.time for x in a])
    assert np.mean(gaps) == pytest.approx(1e-3, rel=0.05) and gaps.min() >= 0
    assert {x.tokens for x in a} == set(range(3, 10))
    path = tmp_path / "trace.csv"
    path.write_text("time,tokens,priority,timeout\n0.001,20,,\n0,10,1,0.5\n")
    assert read_trace(path) == [Arrival(time=0.0, tokens=10, priority=1, timeout=0.5),
                                Arrival(time=0.001, tokens=20)]
    (tmp_path / "bad.csv").write_text("t,n\n0,1\n")
    with pytest.raises(ValueError, match="time and tokens columns"):
        read_trace(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("time,tokens\n0,x\n")
    with pytest.raises(ValueError, match="bad2.csv:2"):
        read_trace(tmp_path / "bad2.csv")
    with pytest.raises(ValueError, match="bad linear service"):
        LinearService.from_spec("1")
    assert LinearService.from_spec("100,2.5")([3, 4]) == math.ceil(100 + 2.5 * 7)


# ---- the load test (serrano loadtest) ------------------------------------------------------
def _loadtest(args):
    from serrano.commands import loadtest
    return loadtest.main(args)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


LOAD_ARGS = ["--service", "linear:200000,5000", "--mhz", "150", "--requests", "400",
             "--points", "4", "--policy", "b8=max_batch_requests=8", "--no-progress"]


def test_loadtest_end_to_end(tmp_path, capsys):
    out = tmp_path / "lt"
    assert _loadtest([*LOAD_ARGS, "--out", str(out), "--energy", "linear:1e-4,2e-6"]) == 0
    printed = capsys.readouterr().out
    assert "assumed: 200000 + 5000 x tokens cycles" in printed
    rows = _csv(out / "loadtest.csv")
    assert [r["policy"] for r in rows] == ["off"] * 4 + ["b8"] * 4
    doc = json.loads((out / "loadtest.json").read_text())
    assert doc["assumed_service_model"] and "assumed" in doc["service"]
    assert doc["command"].startswith("python scripts/loadtest.py --service linear:200000,5000")
    service = LinearService(a=200000, b=5000)
    idle = service([16]) / 150e6
    assert doc["idle_latency_s"] == pytest.approx(idle)
    # Every row is the simulation of its point (same seed per load for every policy).
    loads = doc["points"]
    for k, r in enumerate(rows[4:]):
        i = k                                            # load index
        arrivals = poisson_arrivals(float(r["offered_rate"]), 400, Lengths.fixed(16), seed=i)
        s = simulate(arrivals, BatchPolicy(max_batch_requests=8), service, 150.0).summary()
        assert float(r["throughput"]) == pytest.approx(s["throughput"], rel=1e-3)
        assert float(r["p99_ms"]) == pytest.approx(1e3 * s["p99"], rel=1e-3)
        assert float(r["energy_per_request_uj"]) == pytest.approx(
            1e6 * (1e-4 * s["batches"] + 2e-6 * 16 * 400) / 400, rel=1e-3)
    # Past saturation: batching off runs at 1/idle, b8 near full batches' capacity.
    heavy_off, heavy_b8 = rows[3], rows[7]
    assert float(heavy_off["throughput"]) == pytest.approx(1 / idle, rel=0.02)
    assert float(heavy_b8["throughput"]) == pytest.approx(8 / (service([16] * 8) / 150e6),
                                                          rel=0.05)
    assert doc["headline"]["off"]["vs_off"] == 1.0
    assert {p["policy"] for p in loads} == {"off", "b8"}
    for name in ("latency_vs_throughput.png", "batch_sizes.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_loadtest_on_a_dask_scheduler_gives_the_same_table(tmp_path):
    from dask.distributed import LocalCluster
    here, there = tmp_path / "here", tmp_path / "there"
    assert _loadtest([*LOAD_ARGS, "--out", str(here), "--no-plots"]) == 0
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster:
        assert _loadtest([*LOAD_ARGS, "--out", str(there), "--no-plots",
                          "--scheduler", cluster.scheduler_address]) == 0
    assert _csv(here / "loadtest.csv") == _csv(there / "loadtest.csv")


def test_loadtest_lengths_trace_and_errors(tmp_path, capsys):
    from serrano.commands.loadtest import parse_lengths
    from test_model import _tiny_dir
    _tiny_dir(tmp_path)
    (tmp_path / "s.txt").write_text("the cat sat\n\na dog ran very fast\n")
    got = parse_lengths(f"sentences:{tmp_path / 's.txt'}", str(tmp_path))
    assert got.values == (5, 7)                  # with [CLS] and [SEP]
    assert parse_lengths("uniform:2,4", None).values == (2, 3, 4)
    with pytest.raises(ValueError, match="bad --lengths"):
        parse_lengths("gaussian:3", None)
    # A trace replayed at twice its speed.
    trace = tmp_path / "trace.csv"
    trace.write_text("time,tokens\n" + "".join(f"{0.1 * k},{8 + k % 3}\n" for k in range(50)))
    out = tmp_path / "lt"
    assert _loadtest(["--service", "linear:100000,1000", "--trace", str(trace), "--loads",
                      "0.5", "--out", str(out), "--no-plots", "--no-progress"]) == 0
    doc = json.loads((out / "loadtest.json").read_text())
    mu1 = doc["no_batching_capacity"]
    assert [p["offered_rate"] for p in doc["points"]] == [pytest.approx(0.5 * mu1)] * 6
    assert all(p["completed"] == 50 for p in doc["points"])
    capsys.readouterr()
    assert _loadtest(["--service", "cycle-model", "--out", str(out)]) == 2
    assert "cycle-model:PATH needs the calibrated model's file" in capsys.readouterr().err
    assert _loadtest(["--service", f"cycle-model:{tmp_path / 'none.json'}",
                      "--out", str(out)]) == 2
    assert "no such cycle model file" in capsys.readouterr().err
    assert _loadtest(["--service", "linear:1,1", "--policy", "x=max_batch_requests=0",
                      "--out", str(out)]) == 2
    assert "max_batch_requests must be a positive integer, not 0" in capsys.readouterr().err


def test_loadtest_with_a_saved_cycle_model(tmp_path, capsys):
    """--service cycle-model:PATH: the saved CycleModel is the service (its cycles, its
    label, not marked assumed)."""
    from serrano.sim.batcher import service_from_spec
    from serrano.sim.cycle_model import IO_FEATURES, LAYER_FEATURES, CycleModel
    # Coefficients chosen by the test (a real one comes from serrano cycle-model).
    cm = CycleModel(lanes=8, mem_width=8, hidden=32, heads=2, intermediate=64, layers=2,
                    a=2, b=3, coef=dict.fromkeys(LAYER_FEATURES + IO_FEATURES, 1.0),
                    calibrated_on=[], loo_error=0.01)
    path = tmp_path / "cm.json"
    cm.save(path)
    service = service_from_spec(f"cycle-model:{path}")
    assert [service(ls) for ls in ([5], [3, 9, 16])] == [cm.cycles([5]), cm.cycles([3, 9, 16])]
    out = tmp_path / "lt"
    assert _loadtest(["--service", f"cycle-model:{path}", "--requests", "200", "--points", "3",
                      "--policy", "b4=max_batch_requests=4", "--out", str(out), "--no-plots",
                      "--no-progress", "--lengths", "list:5,9"]) == 0
    assert cm.label in capsys.readouterr().out
    doc = json.loads((out / "loadtest.json").read_text())
    assert doc["service"] == cm.label and not doc["assumed_service_model"]
    idle = (cm.cycles([5]) + cm.cycles([9])) / 2 / 150e6
    assert doc["idle_latency_s"] == pytest.approx(idle)
