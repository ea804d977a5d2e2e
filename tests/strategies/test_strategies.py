"""Every strategy against a numpy reference written from its paper's formulas; the robust ones over real HTTP.

The references below are deliberately plain (float64, Python loops, whole arrays)
so that they read as the papers do; fedsync's strategies compute a chunk at a
time, stream or spill.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.strategies.store import reply_digest
from fedsync.wire import codec
from fedsync.coordinator import checkpoint as checkpoint_io
from fedsync.coordinator.checkpoint import CheckpointError
from fedsync.errors import RoundFailed
from fedsync.coordinator.history import History, RoundResult
from fedsync.strategies import Bulyan, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, FedYogi, Krum, MultiKrum
from fedsync.strategies.robust import integer_median
from fedsync.strategies.store import ReplyStore, default_spill_bytes
from tests.support.processes import rounds_done

ROOT = Path(__file__).resolve().parents[2]

# -- references, from the papers ------------------------------------------------------


def ref_mean(replies):
    """FedAvg (McMahan et al. 2017): sum_i n_i x_i / sum_i n_i."""
    total = sum(n for _, n in replies)
    return sum(x * n for x, n in replies) / total


def ref_fedavgm(x, rounds, lr, beta):
    """Hsu et al. 2019: v = beta v + (x - mean); x = x - lr v."""
    v = None
    for replies in rounds:
        g = x - ref_mean(replies)
        v = g if v is None or beta == 0 else beta * v + g
        x = x - lr * v
    return x


def ref_fedopt(kind, x, rounds, eta, beta_1, beta_2, tau):
    """Reddi et al. 2021, Algorithm 2 (m_{-1} = 0, v_{-1} = tau^2)."""
    m, v = np.zeros_like(x), np.full_like(x, tau**2)
    for replies in rounds:
        delta = ref_mean(replies) - x
        m = beta_1 * m + (1 - beta_1) * delta
        if kind == "adagrad":
            v = v + delta**2
        elif kind == "yogi":
            v = v - (1 - beta_2) * delta**2 * np.sign(v - delta**2)
        else:
            v = beta_2 * v + (1 - beta_2) * delta**2
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


def ref_median(xs):
    """Yin et al. 2018: coordinate-wise median."""
    return np.median(np.stack(xs), axis=0)


def ref_trimmed(xs, beta):
    """Yin et al. 2018: drop the floor(beta n) largest and smallest of each coordinate, average the rest."""
    n = len(xs)
    k = int(Fraction(str(beta)) * n)
    ordered = np.sort(np.stack(xs), axis=0)
    return ordered[k : n - k].mean(axis=0)


def ref_distance(a, b):
    return float(sum(np.sum((a[k] - b[k]) ** 2) for k in a))


def ref_krum_scores(xs, f, members):
    closest = max(1, len(members) - f - 2)
    return [sum(sorted(ref_distance(xs[i], xs[j]) for j in members if j != i)[:closest]) for i in members]


def ref_krum(xs, f):
    """Blanchard et al. 2017: the vector whose n - f - 2 nearest neighbours are closest."""
    scores = ref_krum_scores(xs, f, list(range(len(xs))))
    return xs[int(np.argmin(scores))]


def ref_multikrum(xs, f, m):
    """Blanchard et al. 2017, section 5: the plain mean of the m best-scored vectors."""
    scores = ref_krum_scores(xs, f, list(range(len(xs))))
    best = sorted(range(len(xs)), key=lambda i: (scores[i], i))[:m]
    return {k: sum(xs[i][k] for i in best) / m for k in xs[0]}


def ref_bulyan(xs, f):
    """El Mhamdi et al. 2018: theta = n - 2f picked by repeated Krum; per coordinate, the mean of the
    beta = theta - 2f values closest to the median."""
    remaining = list(range(len(xs)))
    picked = []
    for _ in range(len(xs) - 2 * f):
        scores = ref_krum_scores(xs, f, remaining)
        picked.append(remaining.pop(int(np.argmin(scores))))
    beta = len(picked) - 2 * f
    out = {}
    for k in xs[0]:
        stack = np.stack([xs[i][k] for i in picked]).reshape(len(picked), -1)
        result = []
        for column in stack.T:
            med = np.median(column)
            order = sorted(range(len(column)), key=lambda i: (abs(column[i] - med), i))
            result.append(np.mean(column[order[:beta]]))
        out[k] = np.array(result).reshape(xs[0][k].shape)
    return out


def ref_integer_median(values):
    """The exact median of Python integers, half to even; booleans: majority, a tie is True."""
    ordered = sorted(int(v) for v in values)
    n = len(ordered)
    return round(Fraction(ordered[(n - 1) // 2] + ordered[n // 2], 2))


# -- inputs ------------------------------------------------------------------------------


def random_replies(seed, n, dtype=np.float64, shapes=((3, 4), (5,))):
    rng = np.random.default_rng(seed)
    replies = []
    for _ in range(n):
        arrays = {f"a{i}": rng.normal(0, 1, shape).astype(dtype) for i, shape in enumerate(shapes)}
        replies.append((arrays, int(rng.integers(1, 100))))
    return replies


def current_like(replies, seed=99):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 1, a.shape).astype(a.dtype) for k, a in replies[0][0].items()}


def run(strategy, current, replies):
    return strategy.aggregate(current, iter(replies))


ROBUST = {
    "median": (lambda **kw: FedMedian(**kw), lambda xs: {k: ref_median([x[k] for x in xs]) for k in xs[0]}),
    "trimmed": (lambda **kw: FedTrimmedAvg(beta=0.29, **kw), lambda xs: {k: ref_trimmed([x[k] for x in xs], 0.29) for k in xs[0]}),
    "krum": (lambda **kw: Krum(num_malicious_clients=2, **kw), lambda xs: ref_krum(xs, 2)),
    "multikrum": (lambda **kw: MultiKrum(num_malicious_clients=2, num_clients_to_keep=4, **kw), lambda xs: ref_multikrum(xs, 2, 4)),
    "bulyan": (lambda **kw: Bulyan(num_malicious_clients=1, **kw), lambda xs: ref_bulyan(xs, 1)),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", sorted(ROBUST))
@pytest.mark.parametrize("spill_bytes", [None, 0])
def test_robust_strategies_match_their_papers(name, seed, spill_bytes):
    make, reference = ROBUST[name]
    replies = random_replies(seed, 7 + seed)  # 0.29 * 100 would cut 28 with floats; here 7..10 replies
    got = run(make(spill_bytes=spill_bytes), current_like(replies), replies)
    # Ties go to the earlier reply in the order of their digests, not of their arrival (#23 item 4); Bulyan's
    # repeated Krum ties whenever one closest distance scores (the two nearest replies share it).
    canonical = sorted(replies, key=lambda pair: reply_digest(pair[0], pair[1], pair[0]))
    expected = reference([x for x, _ in canonical])
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-12)
        assert got[k].dtype == np.float64


def test_trimmed_mean_cuts_an_exact_count():
    assert FedTrimmedAvg(beta=0.29).cut(100) == 29  # int(0.29 * 100) is 28
    assert FedTrimmedAvg(beta=0.1).cut(30) == 3 and FedTrimmedAvg(beta=0.0).cut(5) == 0


@pytest.mark.parametrize("name", sorted(ROBUST))
def test_robust_strategies_on_float32_stay_float32_and_close(name):
    make, reference = ROBUST[name]
    replies = random_replies(5, 9, np.float32)
    got = run(make(), current_like(replies), replies)
    expected = reference([{k: a.astype(np.float64) for k, a in x.items()} for x, _ in replies])
    for k in expected:
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ROBUST))
def test_all_replies_equal_give_that_reply(name):
    make, _ = ROBUST[name]
    reply = random_replies(1, 1)[0][0]
    got = run(make(), current_like([(reply, 1)]), [(reply, n) for n in range(1, 8)])
    for k in reply:
        np.testing.assert_array_equal(got[k], reply[k])


def test_a_single_reply_is_the_result_where_allowed_and_too_few_fail_elsewhere():
    reply = random_replies(2, 1)[0][0]
    for strategy in (FedMedian(), FedTrimmedAvg(beta=0.4), FedAvg(), Krum(), MultiKrum(), Bulyan()):
        replies = [(reply, 5)]
        if isinstance(strategy, (Krum, MultiKrum, Bulyan)):
            with pytest.raises(RoundFailed, match=r"needs at least 3 results, got 1; the model was left unchanged"):
                run(strategy, current_like(replies), replies)
            continue
        got = run(strategy, current_like(replies), replies)
        for k in reply:
            np.testing.assert_array_equal(got[k], reply[k])


@pytest.mark.parametrize(
    "strategy, n, needed",
    [(Krum(num_malicious_clients=1), 4, 5), (MultiKrum(num_malicious_clients=2), 6, 7), (Bulyan(num_malicious_clients=1), 6, 7),
     (MultiKrum(num_malicious_clients=0, num_clients_to_keep=4), 3, 4)],
)
def test_too_few_results_fail_the_round_and_leave_the_model_unchanged(strategy, n, needed):
    data = FedArrays({"a0": np.zeros((3, 4)), "a1": np.zeros(5)}, strategy=strategy)
    before = {k: a.copy() for k, a in data.model.items()}
    payloads = []
    for arrays, samples in random_replies(3, n):
        sender = FedArrays(arrays)
        sender.samples = samples
        payloads.append(bytes(sender.serialize(1)))
    with pytest.raises(RoundFailed, match=rf"needs at least {needed} results, got {n}"):
        data.merge(payloads, 1)
    for k in before:
        np.testing.assert_array_equal(data.model[k], before[k])


# -- streaming: FedAvg and the server optimizers ---------------------------------------------


OPTIMIZERS = {
    "fedavg": (lambda: FedAvg(), lambda x, rounds: [x := ref_mean(r) for r in rounds][-1]),
    "fedavgm": (lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9), lambda x, rounds: ref_fedavgm(x, rounds, 0.7, 0.9)),
    "fedavgm-nomomentum": (lambda: FedAvgM(server_learning_rate=0.5), lambda x, rounds: ref_fedavgm(x, rounds, 0.5, 0.0)),
    "fedadam": (lambda: FedAdam(eta=0.3, beta_1=0.8, beta_2=0.95, tau=1e-2), lambda x, r: ref_fedopt("adam", x, r, 0.3, 0.8, 0.95, 1e-2)),
    "fedyogi": (lambda: FedYogi(eta=0.3, beta_1=0.8, beta_2=0.95, tau=1e-2), lambda x, r: ref_fedopt("yogi", x, r, 0.3, 0.8, 0.95, 1e-2)),
    "fedadagrad": (lambda: FedAdagrad(eta=0.3, beta_1=0.5, tau=1e-2), lambda x, r: ref_fedopt("adagrad", x, r, 0.3, 0.5, 0.0, 1e-2)),
}


def merge_rounds(data, rounds):
    """Merge each round's replies through FedArrays.merge, as payload bytes (the streaming path)."""
    for rep, replies in enumerate(rounds, start=1):
        payloads = []
        for arrays, samples in replies:
            sender = FedArrays({k: a.copy() for k, a in arrays.items()})
            sender.samples = samples
            payloads.append(bytes(sender.serialize(rep)))
        data.merge(payloads, rep)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_streaming_strategies_match_their_papers_over_rounds(name, seed):
    make, reference = OPTIMIZERS[name]
    rounds = [random_replies(seed * 10 + r, 1 + (seed + r) % 4) for r in range(4)]
    start = current_like(rounds[0], seed)
    data = FedArrays({k: a.copy() for k, a in start.items()}, strategy=make())
    merge_rounds(data, rounds)
    for k in start:
        expected = reference(start[k], [[(x[k], n) for x, n in replies] for replies in rounds])
        np.testing.assert_allclose(data.model[k], expected, rtol=1e-12, atol=1e-12)
    # aggregate() on whole replies is the same step as the streamed merge
    strategy = make()
    x = dict(start)
    for replies in rounds:
        x = run(strategy, x, replies)
    for k in start:
        np.testing.assert_allclose(x[k], data.model[k], rtol=1e-12, atol=1e-12)


def test_fedavgm_with_flower_defaults_is_fedavg_exactly():
    replies = random_replies(4, 5, np.float32)
    current = current_like(replies)
    for k, a in run(FedAvgM(), current, replies).items():
        np.testing.assert_array_equal(a, run(FedAvg(), current, replies)[k])


def test_an_overflowing_server_step_fails_with_model_and_state_unchanged():
    data = FedArrays({"w": np.zeros(3, np.float32)}, strategy=FedAdagrad(eta=1e38, tau=1e-30))
    merge_rounds(data, [[({"w": np.full(3, 1.0, np.float32)}, 1)]])
    before, state = data.model["w"].copy(), {k: v.copy() for k, v in data.strategy.state().items()}
    with pytest.raises(RoundFailed, match="overflows"):
        merge_rounds(data, [[({"w": np.full(3, 3e38, np.float32)}, 1)]])
    np.testing.assert_array_equal(data.model["w"], before)
    for k, v in data.strategy.state().items():
        np.testing.assert_array_equal(v, state[k])


# -- integer and boolean arrays (issue point 7) --------------------------------------------


def integer_replies(seed, n):
    rng = np.random.default_rng(seed)
    replies = []
    for _ in range(n):
        arrays = {
            "w": rng.normal(0, 1, 4),
            "count": rng.integers(-(2**62), 2**62, 6, dtype=np.int64),
            "small": rng.integers(0, 255, 6, dtype=np.uint8),
            "mask": rng.integers(0, 2, 6).astype(bool),
        }
        replies.append((arrays, int(rng.integers(1, 50))))
    return replies


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_integer_arrays_take_the_exact_median_in_robust_strategies(n):
    replies = integer_replies(n, n)
    for strategy in (FedMedian(), FedTrimmedAvg(), Krum(), MultiKrum(), Bulyan(), FedMedian(spill_bytes=0)):
        if n < 3 and isinstance(strategy, (Krum, MultiKrum, Bulyan)):
            continue
        got = run(strategy, current_like(replies), replies)
        for k in ("count", "small", "mask"):
            assert got[k].dtype == replies[0][0][k].dtype
            for i in range(6):
                values = [x[k][i] for x, _ in replies]
                want = ref_integer_median(values) if k != "mask" else sum(values) >= n - sum(values)
                assert got[k][i] == want, (type(strategy).__name__, k, i, values)


def test_integer_median_is_exact_at_the_ends_of_int64():
    rows = np.array([[2**63 - 1, -(2**63), -3, 5], [2**63 - 2, 2**63 - 1, -2, 6]], np.int64)
    assert integer_median(rows).tolist() == [2**63 - 2, 0, -2, 6]  # -(2**63)+(2**63-1) = -1 -> -0.5 -> 0; -2.5 -> -2; 5.5 -> 6
    assert integer_median(np.array([[0], [2**64 - 1]], np.uint64)).tolist() == [2**63]  # 2**63 - 0.5 -> even


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_integer_arrays_take_fedavgs_exact_weighted_mean_in_streaming_strategies(name):
    make, _ = OPTIMIZERS[name]
    replies = integer_replies(3, 5)
    start = current_like(replies)
    data = FedArrays({k: a.copy() for k, a in start.items()}, strategy=make())
    merge_rounds(data, [replies])
    total = sum(n for _, n in replies)
    for k in ("count", "small"):
        for i in range(6):
            exact = Fraction(sum(int(x[k][i]) * n for x, n in replies), total)
            assert data.model[k][i] == round(exact)  # round() of a Fraction: half to even
    weighted_true = [sum(n for x, n in replies if x["mask"][i]) for i in range(6)]
    assert data.model["mask"].tolist() == [2 * t >= total for t in weighted_true]


# -- the spill file ---------------------------------------------------------------------------


def test_spilled_replies_are_read_back_exactly_and_the_folder_is_deleted_whatever_happens(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    replies = random_replies(8, 6)
    seen = []

    def arriving(fail_at=None):
        for index, reply in enumerate(replies):
            if index == fail_at:
                raise RoundFailed("quorum missed")
            if index >= 2:
                seen.append(sorted(p.name for p in tmp_path.iterdir()))
            yield reply

    in_ram = run(FedMedian(spill_bytes=None), current_like(replies), replies)
    budget = 2 * sum(a.nbytes for a in replies[0][0].values())  # two replies in RAM, the rest spilled
    spilled = FedMedian(spill_bytes=budget).aggregate(current_like(replies), arriving())
    for k in in_ram:
        np.testing.assert_array_equal(spilled[k], in_ram[k])
    assert seen[0] == [] and all(len(names) == 1 and names[0].startswith("fedsync-spill-") for names in seen[1:])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RoundFailed, match="quorum missed"):
        FedMedian(spill_bytes=0).aggregate(current_like(replies), arriving(fail_at=4))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RoundFailed, match="needs at least 7"):
        Bulyan(num_malicious_clients=1, spill_bytes=0).aggregate(current_like(replies), iter(replies))
    assert list(tmp_path.iterdir()) == []


def test_the_store_counts_what_it_spills_and_the_default_budget_is_a_share_of_available_memory():
    layout = {"a": ((10,), np.dtype(np.float32))}
    with ReplyStore(layout, spill_bytes=80) as store:
        for value in range(4):
            store.add({"a": np.full(10, value, np.float32)}, 1)
        assert store.spilled == 2 and os.path.isdir(store.folder)
        folder = store.folder
        assert store.rows("a", 3, 7).tolist() == [[v] * 4 for v in range(4)]
    assert not os.path.exists(folder)
    available = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemAvailable"))) * 1024
    assert abs(default_spill_bytes() - available // 4) < available // 20  # memory moves a little meanwhile


def test_bad_parameters_are_refused_by_name():
    for make, match in [
        (lambda: FedTrimmedAvg(beta=0.5), "beta must be a number in \\[0, 0.5\\)"),
        (lambda: Krum(num_malicious_clients=-1), "num_malicious_clients must be an integer >= 0"),
        (lambda: MultiKrum(num_clients_to_keep=0), "num_clients_to_keep must be an integer >= 1"),
        (lambda: FedAdam(beta_1=1.0), "beta_1 must be in \\[0, 1\\)"),
        (lambda: FedYogi(tau=0), "tau must be in \\(0, inf\\]"),
        (lambda: FedAvgM(server_learning_rate=float("nan")), "server_learning_rate must be a finite number"),
        (lambda: FedMedian(spill_bytes=-1), "spill_bytes must be None"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()


# -- checkpoints ----------------------------------------------------------------------------


def history_to(rep):
    history = History()
    for r in range(1, rep + 1):
        history.append(RoundResult(repetition=r))
    return history


def test_adaptive_state_survives_a_checkpoint_and_a_resume_in_process(tmp_path):
    rounds = [random_replies(r, 3) for r in range(6)]
    start = current_like(rounds[0])

    def fresh():
        return FedArrays({k: a.copy() for k, a in start.items()}, strategy=FedYogi(eta=0.2))

    straight = fresh()
    merge_rounds(straight, rounds)
    first = fresh()
    merge_rounds(first, rounds[:3])
    checkpoint_io.save(tmp_path, first, 3, history_to(3))
    assert (tmp_path / "round-000003" / "strategy.safetensors").exists()
    resumed = fresh()
    assert checkpoint_io.load(tmp_path, resumed)[0] == 3
    for k, v in first.strategy.state().items():
        np.testing.assert_array_equal(resumed.strategy.state()[k], v)
    merge_rounds(resumed, rounds[3:])
    for k in start:
        np.testing.assert_array_equal(resumed.model[k], straight.model[k])


def test_a_damaged_or_foreign_strategy_state_is_refused_and_changes_nothing(tmp_path):
    data = FedArrays({"w": np.zeros(4)}, strategy=FedAdam())
    merge_rounds(data, [[({"w": np.ones(4)}, 2)]])
    checkpoint_io.save(tmp_path, data, 1, history_to(1))
    with pytest.raises(CheckpointError, match="holds the state of strategy 'FedAdam' but this coordinator merges with FedYogi"):
        checkpoint_io.load(tmp_path, FedArrays({"w": np.zeros(4)}, strategy=FedYogi()))
    with pytest.raises(CheckpointError, match="holds the state of strategy 'FedAdam' but this coordinator merges with FedAvg"):
        checkpoint_io.load(tmp_path, FedArrays({"w": np.zeros(4)}))
    # A negative second moment with its checksum redone: refused by the strategy's own check.
    state = {k: v.copy() for k, v in data.strategy.state().items()}
    state["v/w"][0] = -1.0
    raw = bytes(codec.encode_payload(state, {"fedsync.strategy": "FedAdam"}))
    (tmp_path / "round-000001" / "strategy.safetensors").write_bytes(raw)
    pointer = json.loads((tmp_path / "checkpoint.json").read_text())
    pointer["strategy_sha256"] = __import__("hashlib").sha256(raw).hexdigest()
    (tmp_path / "checkpoint.json").write_text(json.dumps(pointer))
    target = FedArrays({"w": np.full(4, 7.0)}, strategy=FedAdam())
    with pytest.raises(CheckpointError, match="strategy state does not fit: FedAdam state 'v/w' holds negative values"):
        checkpoint_io.load(tmp_path, target)
    assert target.model["w"].tolist() == [7.0] * 4 and target.strategy.state() == {}
    # A changed byte without the checksum redone.
    (tmp_path / "round-000001" / "strategy.safetensors").write_bytes(raw[:-1] + b"\x01")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        checkpoint_io.load(tmp_path, target)


def test_a_krum_checkpoint_restores_its_single_saved_model(tmp_path):
    data = FedArrays({"a0": np.zeros((3, 4)), "a1": np.zeros(5)}, strategy=Krum(num_malicious_clients=1))
    merge_rounds(data, [random_replies(6, 5)])
    checkpoint_io.save(tmp_path, data, 1, history_to(1))
    restored = FedArrays({"a0": np.zeros((3, 4)), "a1": np.zeros(5)}, strategy=Krum(num_malicious_clients=1))
    checkpoint_io.load(tmp_path, restored)
    for k in data.model:
        np.testing.assert_array_equal(restored.model[k], data.model[k])


# -- real processes ---------------------------------------------------------------------------


def start_coordinator(checkpoint, rounds, out, strategy, urls):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "tests.support.devices.strategies", str(checkpoint), str(rounds), str(out), strategy, *urls]
    return subprocess.Popen(args, cwd=ROOT, env=env)


@pytest.mark.slow  # three coordinator processes: the in-process resume test above covers the fast tier
def test_a_fedadam_coordinator_killed_mid_run_resumes_to_the_same_model(devices, tmp_path):
    urls = [devices("linreg", seed, n, shift).url for seed, n, shift in [(0, 40, -1.0), (1, 120, 0.0)]]
    rounds = 8
    straight = start_coordinator(tmp_path / "straight", rounds, tmp_path / "straight.safetensors", "fedadam", urls)
    assert straight.wait(timeout=120) == 0
    victim = start_coordinator(tmp_path / "killed", rounds, tmp_path / "killed.safetensors", "fedadam", urls)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and rounds_done(tmp_path / "killed") < 3:
        time.sleep(0.01)
    victim.kill()  # SIGKILL
    victim.wait(timeout=10)
    assert 3 <= rounds_done(tmp_path / "killed") < rounds, "the coordinator finished before it could be killed"
    assert list((tmp_path / "killed").glob("round-*/strategy.safetensors"))
    resumed = start_coordinator(tmp_path / "killed", rounds, tmp_path / "killed.safetensors", "fedadam", urls)
    assert resumed.wait(timeout=120) == 0
    expected, _ = codec.decode((tmp_path / "straight.safetensors").read_bytes())
    got, _ = codec.decode((tmp_path / "killed.safetensors").read_bytes())
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-15)


@pytest.mark.slow  # starts processes that run a whole command: full suite only (fast tier < 90 s)
def test_one_byzantine_device_ruins_fedavg_but_not_the_robust_strategies(devices):
    honest = [devices("tests.support.devices.strategies:honest", 1.0 + 0.05 * i, 10 + i, i).url for i in range(4)]
    byzantine = devices("tests.support.devices.strategies:scaled", 1.0, 1e6, 10).url
    extra = [devices("tests.support.devices.strategies:honest", 1.0 - 0.05 * i, 10, 10 + i).url for i in (1, 2)]
    honest_mean = 1.075  # the honest devices' values average 1.075 (within their noise)
    results = {}
    cases = [
        (FedAvg(), honest + [byzantine]),
        (FedMedian(), honest + [byzantine]),
        (FedTrimmedAvg(beta=0.2), honest + [byzantine]),
        (Krum(num_malicious_clients=1), honest + [byzantine]),
        (MultiKrum(num_malicious_clients=1), honest + [byzantine]),
        # Bulyan's guarantee needs n >= 4f + 3: seven devices for one Byzantine one.
        (Bulyan(num_malicious_clients=1), honest + [byzantine] + extra),
        (FedMedian(spill_bytes=0), honest + [byzantine]),
    ]
    for strategy, urls in cases:
        from tests.support.devices.strategies import layout

        data = FedArrays(layout(), strategy=strategy)
        with Federated(data=data, remotes=urls, timeout=60) as alg:
            result = alg.round()
        assert sorted(result.answered) == sorted(urls)
        results[type(strategy).__name__ + ("-spilled" if strategy is cases[-1][0] else "")] = (
            float(np.abs(np.concatenate([data.model["w"].ravel(), data.model["b"].ravel()]) - honest_mean).max()),
            int(data.model["steps"]),
        )
    assert results["FedAvg"][0] > 1e4 and results["FedAvg"][1] > 2**35  # ruined
    for name, (distance, steps) in results.items():
        if name != "FedAvg":
            assert distance < 0.2, (name, distance)
            assert steps == 10, (name, steps)


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
def test_the_docs_snippet_runs_and_prints_what_the_docs_say(tmp_path):
    import re

    text = (ROOT / "docs" / "strategies.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    expected = re.search(r"\nprints\n\n```\n(.*?)```", text, re.S).group(1).splitlines()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected
