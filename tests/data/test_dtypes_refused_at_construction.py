"""A model whose arrays no payload can carry is refused when it is built, naming the array,
not inside the first round's send (the kind of #22's FedKeras bfloat16 item)."""

import numpy as np
import pytest

from fedsync.data import FedArrays


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.longdouble, object, "datetime64[s]", "U3"])
def test_fedarrays_refuses_a_dtype_no_payload_carries(dtype):
    with pytest.raises(TypeError, match=r"array 'w' has dtype .* which a payload cannot carry; supported: float64"):
        FedArrays({"w": np.zeros(3, dtype=dtype)}, None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64, np.int8, np.uint16, np.bool_])
def test_fedarrays_takes_every_dtype_a_payload_carries(dtype):
    fed = FedArrays({"w": np.zeros(3, dtype=dtype)}, None)
    assert fed.serialize(1)  # and it really travels


def test_fedtorch_refuses_a_complex_model_when_built():
    torch = pytest.importorskip("torch")
    from fedsync.data import FedTorch

    model = torch.nn.Linear(2, 1).to(torch.complex64)
    with pytest.raises(TypeError, match="complex64, which FedTorch cannot exchange"):
        FedTorch(model, None)
