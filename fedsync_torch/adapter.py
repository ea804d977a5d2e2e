"""FedTorch: a ``torch.nn.Module``'s state dict as federated arrays.

torch is imported inside the methods that need it, never at module level, so
that loading fedsync's plugins does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsync.data.adapters import check_fit, without_addresses
from fedsync.data.arrays import FedArrays, TrainResult
from fedsync.data.proximal import NO_GLOBAL, checked_mu

if TYPE_CHECKING:
    import torch

__all__ = ["FedTorch"]

# torch dtypes whose tensors have a numpy twin the codec can carry as they are.
_NATIVE = frozenset(
    {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool"}
)
# Dtypes numpy lacks, carried as float32: exact, and FedAvg averages them as the
# floats they are (a uint16 view of bfloat16 bits would average bit patterns).
_UPCAST = frozenset({"bfloat16"})


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


class FedTorch(FedArrays):
    """A torch model trained on devices and merged by sample-weighted FedAvg.

    The exchanged arrays are the model's ``state_dict()``: parameters and
    persistent buffers, by their state-dict names. Loading them copies into the
    model's existing tensors, on the model's own device and in its own dtype,
    so the parameter objects stay the same and an optimizer created before
    keeps working.

    Args:
        model: the ``torch.nn.Module``; declare the same architecture on the
            coordinator and on every device.
        train: ``train(model) -> samples`` or ``-> (samples, metrics)``, called on
            a device after the coordinator's weights were loaded into ``model``;
            e.g. a few local epochs ending in ``return len(dataset)``. ``None`` on
            the coordinator.
        **options: the keywords of :class:`fedsync.FedArrays`, the same for every
            array adapter and checked there: ``evaluate`` (``evaluate(model) ->
            samples`` or ``-> (samples, metrics)``, measuring the coordinator's
            weights on this device's data for ``Federated.evaluate()``; the
            device's own weights are restored after), ``strategy`` (sample-weighted
            :class:`fedsync.FedAvg` by default), ``wire_dtype`` (``"float16"``,
            ``"bfloat16"``, ``"int8"`` or ``"int4"`` on the wire, both ways), ``state``, ``shared``
            (``"trainable"``: only what trains travels, e.g. a PEFT model's LoRA adapters), ``updates``,
            ``top_k``, ``download``, ``download_top_k`` (docs/compression.md).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``, ``train`` or
            ``evaluate`` is not callable, or an unknown keyword.
        ValueError: an unknown ``wire_dtype``.

    How dtypes merge (with the default FedAvg):

    - floating tensors are averaged weighted by each device's sample count;
    - integer buffers, e.g. BatchNorm's ``num_batches_tracked`` (int64), take
      the exact weighted mean **rounded half to even** (devices that agree keep
      their value, even above 2**53); boolean buffers take the weighted
      majority, a tie giving ``True``;
    - ``bfloat16`` tensors, which numpy cannot represent, travel and merge as
      float32 (exact) and are cast back into bfloat16 when loaded; the specs
      still record ``bfloat16``, so a bfloat16 and a float32 model do not match.
      Other dtypes (complex, float8, quantized) raise a ``TypeError`` naming
      the tensor; convert the model with ``model.float()``.

    The specs hash :meth:`architecture`: each submodule's type name and
    ``extra_repr()``, and every state-dict entry's name, shape and dtype.
    """

    token = "torch"

    requires = ("torch",)  # lets `fedsync plugins` check the framework without importing it

    def __init__(
        self,
        model: torch.nn.Module,
        train: Callable[..., TrainResult] | None = None,
        **options: Any,
    ) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"FedTorch takes a torch.nn.Module, got {type(model).__name__}; "
                "e.g. FedTorch(torch.nn.Linear(3, 1), train)"
            )
        # The base validates and stores numpy arrays; a model has none of its own,
        # so hand it nothing and keep the module as the model train() is given.
        super().__init__({}, train, **options)
        self.model = model
        self._global_tensors: tuple[Any, dict[str, torch.Tensor]] | None = None
        self._state()  # a dtype no payload carries (complex, float8) is refused now, not at the first send

    def proximal_term(self, mu: float) -> torch.Tensor:
        """FedProx's ``mu/2 * ||w - w_global||^2`` as a scalar tensor to add to the loss.

        Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
        The sum runs over the model's parameters that require gradients;
        ``w_global`` are the weights received this round (a copy kept by
        ``receive``, moved to each parameter's device and dtype once per round),
        so the term is differentiable with respect to the parameters and its
        gradient is ``mu * (w - w_global)``::

            def train(model, config):
                for xb, yb in batches:
                    loss = cross_entropy(model(xb), yb) + fed.proximal_term(config.get("mu", 0.0))
                    ...

        Raises:
            ValueError: ``mu`` is not a finite number >= 0.
            RuntimeError: no weights were received yet (called outside ``train``).
        """
        import torch

        mu = checked_mu(mu)
        starts = self._global_parameters()
        terms = [
            ((p - starts[name]) ** 2).sum()
            for name, p in self.model.named_parameters()
            if p.requires_grad and name in starts  # local ones (shared=) stay out: they have no global value
        ]
        if not terms:
            return torch.zeros(())
        return (0.5 * mu) * torch.stack(terms).sum()

    def _global_parameters(self) -> dict[str, torch.Tensor]:
        """This round's global weights as tensors beside the parameters, converted once per round."""
        import torch

        snapshot = self.global_weights()
        if snapshot is None:
            raise RuntimeError(NO_GLOBAL)
        cached = self._global_tensors
        if cached is None or cached[0] is not snapshot:
            tensors = {}
            for name, p in self.model.named_parameters():
                if name in snapshot:
                    tensors[name] = torch.from_numpy(snapshot[name]).to(device=p.device, dtype=p.dtype)
            cached = self._global_tensors = (snapshot, tensors)
        travel = set(self.selection.shared)
        missing = [
            name
            for name, p in self.model.named_parameters()
            if p.requires_grad and name in travel and name not in cached[1]
        ]
        if missing:
            raise RuntimeError(
                f"parameters {missing[:5]} have no global weights this round (not floating, or not in the state dict)"
            )
        return cached[1]

    def _state(self) -> dict[str, torch.Tensor]:
        import torch

        state = self.model.state_dict()
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"state dict entry {name!r} is a {type(value).__name__}, not a tensor "
                    "(from a module's get_extra_state?); FedTorch exchanges tensors only"
                )
            dtype = _dtype_name(value)
            if dtype not in _NATIVE and dtype not in _UPCAST:
                raise TypeError(
                    f"tensor {name!r} has dtype {dtype}, which FedTorch cannot exchange; "
                    f"supported: {', '.join(sorted(_NATIVE | _UPCAST))}. Convert the model, "
                    "e.g. model.float()"
                )
        return state

    def get_arrays(self) -> dict[str, np.ndarray]:
        """The state dict as CPU numpy arrays (views of CPU tensors, not copies)."""
        arrays = {}
        for name, tensor in self._state().items():
            tensor = tensor.detach()
            if _dtype_name(tensor) in _UPCAST:
                tensor = tensor.float()
            arrays[name] = tensor.cpu().numpy()
        return arrays

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes as exchanged, read off the tensors without copying them to the host."""
        return {
            name: (tuple(t.shape), np.dtype("float32" if _dtype_name(t) in _UPCAST else _dtype_name(t)))
            for name, t in self._state().items()
        }

    def set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy ``arrays`` into the model's tensors in place, keeping their device and dtype.

        Every name and shape is checked before anything is copied, so a
        payload that does not fit raises :class:`fedsync.errors.PayloadRejected`
        (a ``ValueError``) and leaves the model unchanged.
        """
        import torch

        state = self._state()
        if self.selection.part_of(arrays):  # those that travel (shared=), or the local ones of a saved state
            state = {name: tensor for name, tensor in state.items() if name in arrays}
        check_fit(arrays, {name: tuple(tensor.shape) for name, tensor in state.items()}, "tensor")
        with torch.no_grad():
            for name, tensor in state.items():
                array = np.asarray(arrays[name])
                if not array.flags.writeable:
                    # torch warns about read-only numpy memory even though copy_ only reads it.
                    array = array.copy()
                tensor.copy_(torch.from_numpy(array))

    def parameter_kinds(self) -> dict[str, str]:
        """``"trainable"`` (``requires_grad``), ``"frozen"`` (a parameter that does not) or ``"buffer"``, by name."""
        parameters = dict(self.model.named_parameters(remove_duplicate=False))
        return {
            name: ("buffer" if name not in parameters else "trainable" if parameters[name].requires_grad else "frozen")
            for name in self._state()
        }

    def architecture(self) -> dict[str, Any]:
        """The JSON-able description hashed into the specs: module types and configs, weights."""
        modules = [
            {"name": name, "type": type(module).__name__, "config": without_addresses(module.extra_repr())}
            for name, module in self.model.named_modules()
        ]
        weights = [
            {"name": name, "shape": list(tensor.shape), "dtype": _dtype_name(tensor)}
            for name, tensor in self._state().items()
        ]
        return {"modules": modules, "weights": weights}
