"""FedTorch: torch models trained on device processes over real HTTP, merged by FedAvg."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pluggy
import pytest

torch = pytest.importorskip("torch")

import fedsync.plugins.hookspecs  # noqa: E402
from fedsync import FIRST, Federated, Remote  # noqa: E402
from fedsync.errors import PayloadRejected, SpecsMismatch  # noqa: E402
from fedsync_torch import FedTorch  # noqa: E402
from tests.support.processes import ROOT  # noqa: E402
from tests.support.devices.torch_models import MAJORITY, digits_split, mlp, with_batchnorm  # noqa: E402

torch.set_num_threads(1)


def start_together(devices, *calls: tuple) -> list:
    """Start device processes concurrently: each spends seconds importing torch."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: devices(*call), calls))


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(dim=1).numpy() == y).mean())


# -- the README's scenario ---------------------------------------------------------


@pytest.mark.slow
def test_non_iid_digits_reach_held_out_accuracy_within_five_rounds(devices):
    shards, (x_test, y_test) = digits_split()
    for name, (_, y) in shards.items():  # the split really is non-IID
        assert np.isin(y, MAJORITY[name]).mean() > 0.85
    started = start_together(devices, *[("tests.support.devices.torch_models:digits", name) for name in shards])
    remotes = [Remote(device.url) for device in started]
    data = FedTorch(mlp(), None)
    before = accuracy(data.model, x_test, y_test)
    with Federated(data=data, remotes=remotes, timeout=120) as alg:
        for _ in range(5):
            result = alg.round()
            assert sorted(result.answered) == sorted(r.url for r in remotes)
            if accuracy(data.model, x_test, y_test) >= 0.85:
                break
    assert accuracy(data.model, x_test, y_test) >= 0.85 > before
    assert data.last_merge["samples"] == sum(len(y) for _, y in shards.values())
    assert data.last_merge["metrics"]["loss"] < 1.0


# -- merging -----------------------------------------------------------------------


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_merge_weighs_floats_by_samples_and_rounds_integer_buffers(devices):
    many, few = start_together(devices, ("tests.support.devices.torch_models:constant", 1.0, 30, 2), ("tests.support.devices.torch_models:constant", 4.0, 10, 9))
    model = with_batchnorm()
    data = FedTorch(model, None)
    with Federated(data=data, remotes=[many.url, few.url], timeout=60) as alg:
        alg.round()
    state = model.state_dict()
    floating = [name for name, tensor in state.items() if tensor.is_floating_point()]
    assert "1.running_mean" in floating and "1.running_var" in floating  # buffers merge too
    for name in floating:
        assert torch.all(state[name] == 1.75), name  # (1.0 * 30 + 4.0 * 10) / 40
    # (2 * 30 + 9 * 10) / 40 = 3.75, rounded to the nearest integer, still int64
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert state["1.num_batches_tracked"].item() == 4
    assert data.last_merge["samples"] == 40


@pytest.mark.slow
def test_devices_agreeing_on_an_int64_buffer_above_2_to_the_53_merge_to_it_exactly(devices):
    big = 2**62 + 3  # float64 cannot hold it; a float average wrapped it to -922337203685477632
    remotes = start_together(devices, *[("tests.support.devices.torch_models:constant", 1.0, 60000, big)] * 2)
    model = with_batchnorm()
    with Federated(data=FedTorch(model, None), remotes=[d.url for d in remotes], timeout=60) as alg:
        alg.round()
    assert model.state_dict()["1.num_batches_tracked"].item() == big


# -- specs -------------------------------------------------------------------------


@pytest.mark.slow
def test_specs_are_the_same_for_the_same_declaration_in_any_process():
    specs = FedTorch(mlp(64), None).specs(FIRST)
    assert specs.startswith("torch:sha256:")
    assert FedTorch(mlp(64, seed=7), None).specs(FIRST) == specs  # weights' values do not matter
    code = "from tests.support.devices.torch_models import mlp; from fedsync_torch import FedTorch; print(FedTorch(mlp(64), None).specs(1))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == specs


def test_specs_change_with_width_dtype_and_layer_config():
    specs = FedTorch(mlp(64), None).specs(FIRST)
    assert FedTorch(mlp(32), None).specs(FIRST) != specs
    assert FedTorch(mlp(64).double(), None).specs(FIRST) != specs
    # Same weights, different layer: only the module configs tell them apart.
    eps = torch.nn.Sequential(torch.nn.BatchNorm1d(3, eps=1e-3))
    assert FedTorch(eps, None).specs(FIRST) != FedTorch(torch.nn.Sequential(torch.nn.BatchNorm1d(3)), None).specs(FIRST)


def test_specs_ignore_memory_addresses_in_module_reprs():
    class Apply(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fn = lambda x: x

        def extra_repr(self) -> str:
            return f"fn={self.fn!r}"

    assert " at 0x" in Apply().extra_repr()
    assert FedTorch(Apply(), None).specs(FIRST) == FedTorch(Apply(), None).specs(FIRST)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_coordinator_of_another_width_is_told_which_weight_differs_before_sending(devices):
    device = devices("tests.support.devices.torch_models:untrained", 64)
    data = FedTorch(mlp(32), None)
    with Federated(data=data, remotes=[device.url], timeout=60) as alg:
        with pytest.raises(SpecsMismatch) as caught:
            alg.round()
    message = str(caught.value)
    assert device.url in message
    assert data.specs(FIRST) in message and FedTorch(mlp(64), None).specs(FIRST) in message
    assert "0.weight: expected (32, 64) float32, device has (64, 64) float32" in message
    assert Remote(device.url).info()["repetition"] == 0  # nothing was sent


# -- loading weights ---------------------------------------------------------------


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_loading_keeps_parameter_objects_so_an_existing_optimizer_keeps_training():
    model = mlp(16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    parameters = list(model.parameters())
    source = FedTorch(mlp(16, seed=5), None)
    FedTorch(model, None).receive(source.serialize(FIRST), FIRST)
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, source.model.state_dict()[name])
        assert tensor.dtype == torch.float32
    loaded = model[0].weight.detach().clone()
    torch.nn.functional.cross_entropy(model(torch.ones(4, 64)), torch.zeros(4, dtype=torch.long)).backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, loaded)  # the optimizer updated the live parameter


def test_payload_of_wrong_shapes_is_rejected_and_the_model_is_unchanged():
    model = mlp(16)
    data = FedTorch(model, None)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    wrong = FedTorch(mlp(8), None)
    with pytest.raises(PayloadRejected, match=r"'0\.weight': expected \(16, 64\) float32, payload has \(8, 64\) float32"):
        data.receive(wrong.serialize(FIRST), FIRST)
    with pytest.raises(ValueError, match=r"tensor '2\.weight': expected shape \(10, 16\), got \(10, 8\)"):
        # Direct calls are checked too; the first tensors fit, and must not be loaded either.
        data.set_arrays({**data.get_arrays(), "0.weight": np.ones((16, 64), np.float32), "2.weight": np.ones((10, 8), np.float32)})
    with pytest.raises(ValueError, match="missing"):
        data.set_arrays({"0.weight": np.zeros((16, 64), np.float32)})
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_float64_models_round_trip_exactly_and_keep_their_dtype():
    source = FedTorch(mlp(16, seed=3).double(), None)
    target = mlp(16).double()
    FedTorch(target, None).receive(source.serialize(FIRST), FIRST)
    for name, tensor in target.state_dict().items():
        assert tensor.dtype == torch.float64
        assert torch.equal(tensor, source.model.state_dict()[name])


def test_weights_load_from_read_only_bytes_without_warnings():
    saved = bytes(FedTorch(with_batchnorm(), None).serialize(FIRST))  # e.g. read back from a file
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FedTorch(model, None).receive(saved, FIRST)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, with_batchnorm().state_dict()[name])


def test_bfloat16_tensors_travel_as_float32_and_load_back_as_bfloat16():
    source = FedTorch(mlp(8, seed=2).to(torch.bfloat16), None)
    assert {a.dtype for a in source.get_arrays().values()} == {np.dtype(np.float32)}
    target = mlp(8).to(torch.bfloat16)
    FedTorch(target, None).receive(source.serialize(FIRST), FIRST)
    for name, tensor in target.state_dict().items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, source.model.state_dict()[name])
    assert source.specs(FIRST) != FedTorch(mlp(8), None).specs(FIRST)


def test_unsupported_dtypes_are_named_with_a_fix():
    model = torch.nn.Linear(2, 2)
    model.register_buffer("phase", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"'phase' has dtype complex64.*model\.float\(\)"):
        FedTorch(model, None).serialize(FIRST)


def test_a_module_is_required():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        FedTorch({"w": np.zeros(3)}, None)


# -- the plugin --------------------------------------------------------------------


def test_plugin_registers_the_torch_token_through_the_hook():
    import fedsync_torch

    manager = pluggy.PluginManager("fedsync")
    manager.add_hookspecs(fedsync.plugins.hookspecs)
    manager.register(fedsync_torch)
    registered = []
    manager.hook.register_adapters(register=lambda token, cls: registered.append((token, cls)))
    assert registered == [("torch", FedTorch)]
    assert FedTorch(mlp(8), None).specs(FIRST).split(":")[0] == "torch"


def test_loading_the_plugin_does_not_import_torch():
    code = "import sys, fedsync_torch, fedsync.data; fedsync.data.FedTorch; print(json.dumps('torch' in sys.modules))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False


def test_layout_matches_the_arrays_without_copying_them(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 2).to(torch.bfloat16))
    fed = FedTorch(model)
    expected = {name: (a.shape, a.dtype) for name, a in fed.get_arrays().items()}

    def copied(*args, **kwargs):
        raise AssertionError("layout() copied a tensor's values")

    # Every way a tensor's values reach the host: layout() may use none of them.
    monkeypatch.setattr(FedTorch, "get_arrays", copied)
    for method in ("numpy", "cpu", "float", "clone", "tolist"):
        monkeypatch.setattr(torch.Tensor, method, copied)
    assert fed.layout() == expected
