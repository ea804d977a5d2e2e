"""A fedsync coordinator with the proposed core changes patched in at run time (fedsync/ untouched).

Variants (comma-separated): pool, npbuf, fma, finite1, dlK, noenv, noready; see README.md.
Prints one JSON line: median round time, coordinator CPU per round, peak RSS in model copies.
"""
import sys, time, json, threading, resource, argparse, statistics
HERE = __import__("pathlib").Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import numpy as np
import peers
from fedsync import FedArrays, Federated, Remote, strategies
from fedsync.coordinator import federated as fclient
from fedsync.errors import RemoteUnavailable
from fedsync.strategies.base import accumulator_dtype

ap = argparse.ArgumentParser()
ap.add_argument("--params", type=int); ap.add_argument("--urls", nargs="*"); ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--variant", default="")
a = ap.parse_args()
V = set(a.variant.split(",")) - {""}
downloads = int(next((v[2:] for v in V if v.startswith("dl")), "1"))
# Variants whose patch point the core no longer calls: they would measure HEAD under another name.
STALE = {
    "pool": "Remote._read_body is gone: a reply downloads through Remote.open_result/download (a ReplyStream)",
    "npbuf": "Remote._read_body is gone: a reply downloads through Remote.open_result/download (a ReplyStream)",
    "fma": "FedAvg merges streamed replies with its accumulator (WeightedSum); FedAvg.aggregate is not called",
    "noready": "Federated polls with Remote.open_result only; Remote.ready/result are not called",
}
if V & set(STALE):
    sys.exit("; ".join(f"variant {v}: {STALE[v]}" for v in sorted(V & set(STALE))))

POOL = []
if "pool" in V:  # download into a reused, already-faulted numpy buffer, straight from http.client
    def _read_body(self, response):
        length = int(response.headers["Content-Length"])
        buf = next((b for b in POOL if b.size == length), None)
        if buf is not None: POOL.remove(buf)
        else: buf = np.empty(length, np.uint8)
        view = memoryview(buf); got = 0; fp = response.raw._fp
        while got < length:
            n = fp.readinto(view[got:])
            if not n: break
            got += n
        if got != length: raise RemoteUnavailable(self.url, "short")
        return buf
    fclient.Remote._read_body = _read_body
    orig_collect = Federated._collect
    def _collect(self, *args, **kw):
        for reply in orig_collect(self, *args, **kw):
            yield reply
            if isinstance(reply, np.ndarray): POOL.append(reply)
    Federated._collect = _collect
if "npbuf" in V:  # a fresh numpy (transparent-hugepage) buffer per download instead of bytes
    def _read_body(self, response):
        length = int(response.headers["Content-Length"])
        buf = np.empty(length, np.uint8)
        view = memoryview(buf); got = 0; fp = response.raw._fp
        while got < length:
            n = fp.readinto(view[got:])
            if not n: break
            got += n
        if got != length: raise RemoteUnavailable(self.url, "short")
        return buf
    fclient.Remote._read_body = _read_body

CHUNK = 1 << 18
if "fma" in V:  # chunked multiply-add: no model-sized temporary per device
    orig_aggregate = strategies.FedAvg.aggregate
    def aggregate(self, current, results):
        if any(a.dtype.kind != "f" for a in current.values()): return orig_aggregate(self, current, results)
        sums = {name: np.zeros(a.shape, accumulator_dtype(a.dtype)) for name, a in current.items()}
        scratch = {}; total = 0
        for arrs, samples in results:
            if samples <= 0: continue
            total += samples
            for name, acc in sums.items():
                src = arrs[name].reshape(-1); dst = acc.reshape(-1)
                tmp = scratch.get(acc.dtype)
                if tmp is None: tmp = scratch[acc.dtype] = np.empty(CHUNK, acc.dtype)
                for i in range(0, src.size, CHUNK):
                    j = min(i + CHUNK, src.size); t = tmp[: j - i]
                    np.multiply(src[i:j], samples, out=t, dtype=acc.dtype, casting="unsafe")
                    dst[i:j] += t
            del arrs
        merged = {}
        for name, acc in sums.items():
            acc /= total
            merged[name] = acc.astype(current[name].dtype, copy=False)
        return merged
    strategies.FedAvg.aggregate = aggregate

if "finite1" in V:  # merge trusts check(): no second isfinite pass over each reply
    import skipfinite as npproxy
    FedArrays.merge = npproxy.skipping(FedArrays.merge)

import os, tracemalloc
if os.environ.get("TRACE"): tracemalloc.start(25)
if "noenv" in V:  # resolve proxies/CA settings once, not on every request (HTTPTransport now does so itself)
    orig_init = Remote.__init__
    def __init__(self, *args, **kw):
        orig_init(self, *args, **kw); self.transport.session.trust_env = False
    Remote.__init__ = __init__
if "noready" in V:  # one long-poll that returns the body (no separate ready + result requests)
    def ready(self, rep, wait, *, timeout=None):
        body = Remote.result(self, rep, wait, timeout=timeout)
        self._stash = body
        return body is not None
    orig_result = Remote.result
    def result(self, rep, wait, *, timeout=None):
        stash = getattr(self, "_stash", None)
        if stash is not None and wait == 0.0:
            self._stash = None; return stash
        return orig_result(self, rep, wait, timeout=timeout)
    Remote.ready = ready; Remote.result = result
base = peers.status_bytes("VmRSS")
data = FedArrays(peers.model(a.params))
times, cpus = [], []
with Federated(data, [Remote(u) for u in a.urls], timeout=600, downloads=downloads) as alg:
    for r in range(a.rounds + 1):
        c0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
        res = alg.round()
        t = time.perf_counter() - t0; c1 = resource.getrusage(resource.RUSAGE_SELF)
        assert len(res.answered) == len(a.urls), res.failures
        times.append(t); cpus.append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
peak = peers.status_bytes("VmHWM")
if os.environ.get("TRACE"):
    cur, tpeak = tracemalloc.get_traced_memory()
    print("traced peak copies", round(tpeak / (a.params * 4), 2), "current", round(cur / (a.params * 4), 2), file=sys.stderr)

print(json.dumps({"variant": a.variant or "HEAD", "median": round(statistics.median(times[1:]), 3), "times": [round(x, 3) for x in times],
                  "cpu": round(statistics.median(cpus[1:]), 3), "delta_copies": round((peak - base) / (a.params * 4), 2), "peak_mb": round(peak / 1e6)}), flush=True)
