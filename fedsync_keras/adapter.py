"""FedKeras: a Keras 3 model (any backend) as federated arrays.

Keras is imported inside the methods only, so that loading the plugin (or
``fedsync.data``) never imports keras or its backend.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsync.data.adapters import check_fit, without_addresses
from fedsync.data.arrays import FedArrays, TrainResult
from fedsync.data.proximal import NO_GLOBAL, checked_mu

if TYPE_CHECKING:
    import keras

__all__ = ["FedKeras"]

# Keras names what the user did not name from a per-process counter ("dense_3",
# "variable_2"), so these parts of a name say how many objects were created
# before, not what the model is.
_COUNTER = re.compile(r"_\d+$")
_AUTO_VARIABLE = re.compile(r"variable(_\d+)?")

# Weight dtypes the codec carries as they are.
_NATIVE = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"}
)
# bfloat16 travels and merges as float32 (exact) and is cast back when assigned, as FedTorch does: numpy has no
# bfloat16 of its own, and a uint16 view of its bits would average bit patterns.
_UPCAST = frozenset({"bfloat16"})


class FedKeras(FedArrays):
    """A Keras 3 model whose weights are trained on devices and merged by FedAvg.

    Args:
        model: a built Keras model (declare its input with ``keras.Input`` or call
            ``model.build(input_shape)``), declared identically on every device
            and on the coordinator. Its weights, trainable and not (e.g.
            BatchNormalization's moving statistics), are exchanged.
        train: on a device, ``train(model) -> samples`` or
            ``-> (samples, metrics)``: typically ``model.fit(x, y, ...)`` followed
            by ``return x.shape[0]``. ``None`` on the coordinator.
        **options: the keywords of :class:`fedsync.FedArrays`, the same for every
            array adapter and checked there: ``evaluate`` (``evaluate(model) ->
            samples`` or ``-> (samples, metrics)``, measuring the coordinator's
            weights on this device's data for ``Federated.evaluate()``; the
            device's own weights are restored after), ``strategy`` (sample-weighted
            FedAvg by default), ``wire_dtype`` (``"float16"``, ``"bfloat16"``,
            ``"int8"`` or ``"int4"`` on the wire, both ways), ``state``, ``shared`` (``"trainable"``:
            ``trainable_weights`` travel), ``updates``, ``top_k``, ``download``, ``download_top_k``
            (docs/compression.md).

    bfloat16 weights travel and merge as float32 (exact) and are cast back into
    bfloat16 when assigned; the specs still record ``bfloat16``, so a bfloat16 and
    a float32 model do not match (as :class:`fedsync_torch.FedTorch`).

    Raises:
        TypeError: ``model`` is not a Keras model, ``train`` or ``evaluate`` is
            not callable, an unknown keyword, or a weight of a dtype fedsync
            cannot exchange (float8, strings, ...).
        ValueError: the model has no weights yet, or an unknown ``wire_dtype``.

    Example::

        def train(model):
            model.fit(x, y, epochs=2, verbose=0)
            return x.shape[0]

        fedsync.serve(FedKeras(model, train), port=8000)        # a device
        alg = Federated(data=FedKeras(model, None), remotes=[...])  # the coordinator

    Weights are named by their position in the model, not by Keras's layer
    names, so the same declaration gets the same names (and specs) in every
    process: ``"0:Dense/kernel"`` is the kernel of the model's first layer.
    """

    token = "keras"

    requires = ("keras",)  # lets the registry check the framework without importing it

    def __init__(
        self,
        model: keras.Model,
        train: Callable[..., TrainResult] | None = None,
        **options: Any,
    ) -> None:
        import keras

        if not isinstance(model, keras.layers.Layer):
            raise TypeError(
                f"FedKeras takes a Keras model, got {type(model).__name__}; "
                "e.g. FedKeras(keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)]), train)"
            )
        if not model.weights:
            raise ValueError(
                f"the Keras model {model.name!r} has no weights yet, so there is nothing to exchange; "
                "declare its input (keras.Sequential([keras.Input(shape), ...])) or call model.build(input_shape) "
                "before wrapping it, the same way on every device and on the coordinator"
            )
        # The base validates and stores numpy arrays; a Keras model keeps its own
        # variables, so hand the base nothing and keep the model for train(model).
        super().__init__({}, train, **options)
        self.model = model
        unsupported = [
            (name, _dtype_name(v.dtype))
            for name, v in self._variables()
            if _dtype_name(v.dtype) not in _NATIVE | _UPCAST
        ]
        if unsupported:
            name, dtype = unsupported[0]
            raise TypeError(
                f"weight {name!r} has dtype {dtype}, which FedKeras cannot exchange ({len(unsupported)} such weights); "
                f"supported: {', '.join(sorted(_NATIVE | _UPCAST))}. Declare the model with one of them, "
                "e.g. keras.layers.Dense(10, dtype='float32')"
            )
        self._global_tensors: tuple[Any, list[tuple[Any, Any]]] | None = None

    def proximal_term(self, mu: float) -> Any:
        """FedProx's ``mu/2 * ||w - w_global||^2`` as a backend scalar tensor to add to the loss.

        Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
        The sum runs over the model's trainable weights; ``w_global`` are the
        weights received this round (a copy kept by ``receive``, converted to
        backend tensors once per round). Built with ``keras.ops``, so it is
        differentiable wherever the loss is: in a custom ``train_step``, or a
        loop under the backend's gradient tape (TensorFlow: ``tf.GradientTape``)::

            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True)) + fed.proximal_term(config.get("mu", 0.0))

        Raises:
            ValueError: ``mu`` is not a finite number >= 0.
            RuntimeError: no weights were received yet (called outside ``train``).
        """
        import keras

        mu = checked_mu(mu)
        pairs = self._global_pairs()
        total = keras.ops.convert_to_tensor(0.0)
        for variable, start in pairs:
            total = total + keras.ops.sum(keras.ops.square(keras.ops.subtract(variable, start)))
        return total * (0.5 * mu)

    def _global_pairs(self) -> list[tuple[Any, Any]]:
        """``(trainable variable, its global value as a tensor)``, converted once per round."""
        import keras

        snapshot = self.global_weights()
        if snapshot is None:
            raise RuntimeError(NO_GLOBAL)
        cached = self._global_tensors
        if cached is None or cached[0] is not snapshot:
            pairs = []
            for name, variable in self._variables():
                if getattr(variable, "trainable", True) and name in snapshot:
                    pairs.append(
                        (variable, keras.ops.convert_to_tensor(snapshot[name], dtype=_dtype_name(variable.dtype)))
                    )
            cached = self._global_tensors = (snapshot, pairs)
        return cached[1]

    # -- the three framework-specific methods ---------------------------------------

    def get_arrays(self) -> dict[str, np.ndarray]:
        """The model's weights as numpy arrays, by position-based names."""
        import keras

        arrays = {}
        for name, v in self._variables():
            array = np.asarray(keras.ops.convert_to_numpy(v))
            arrays[name] = array.astype(np.float32) if _dtype_name(v.dtype) in _UPCAST else array
        return arrays

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes as exchanged (bfloat16 as float32), read off the variables without converting them."""
        return {
            name: (tuple(v.shape), np.dtype("float32" if _dtype_name(v.dtype) in _UPCAST else _dtype_name(v.dtype)))
            for name, v in self._variables()
        }

    def set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Assign ``arrays`` to the model's weights, each keeping its dtype.

        Names and shapes are checked before anything is assigned, so arrays that
        do not fit raise :class:`fedsync.errors.PayloadRejected` (a ``ValueError``)
        and leave the model unchanged.
        """
        variables = self._variables()
        if self.selection.part_of(arrays):  # those that travel (shared=), or the local ones of a saved state
            variables = [(name, v) for name, v in variables if name in arrays]
        check_fit(arrays, {name: tuple(v.shape) for name, v in variables}, "weight")
        for name, v in variables:
            array = np.asarray(arrays[name])
            if array.dtype.name != _dtype_name(v.dtype):
                array = array.astype(_dtype_name(v.dtype))
            v.assign(array)

    def parameter_kinds(self) -> dict[str, str]:
        """``"trainable"``, ``"frozen"`` (a weight of a layer set ``trainable = False``) or ``"buffer"`` (another
        non-trainable weight: BatchNormalization's moving statistics), by name."""
        frozen: set[int] = set()

        def walk(layer: Any) -> None:
            if not getattr(layer, "trainable", True):
                frozen.update(id(v) for v in layer.weights)
            for sub in _sublayers(layer):
                walk(sub)

        walk(self.model)
        return {
            name: "trainable" if v.trainable else "frozen" if id(v) in frozen else "buffer"
            for name, v in self._variables()
        }

    def architecture(self) -> dict[str, Any]:
        """Layer classes and configs with process-specific names normalized, plus the weights' layout."""
        return {
            "model": type(self.model).__name__,
            "config": _normalized_config(self.model),
            "weights": [
                {"name": name, "shape": [int(d) for d in v.shape], "dtype": _dtype_name(v.dtype)}
                for name, v in self._variables()
            ],
        }

    # -- naming ---------------------------------------------------------------------

    def _variables(self) -> list[tuple[str, Any]]:
        """``(name, variable)`` for every weight, in a stable order, each variable once."""
        named: list[tuple[str, Any]] = []
        used: set[str] = set()
        seen: set[int] = set()

        def add(name: str, variable: Any) -> None:
            seen.add(id(variable))
            unique, n = name, 1
            while unique in used:
                unique, n = f"{name}#{n}", n + 1
            used.add(unique)
            named.append((unique, variable))

        def walk(layer: Any, prefix: str) -> None:
            for i, sub in enumerate(_sublayers(layer)):
                here = f"{prefix}{i}:{type(sub).__name__}"
                if _sublayers(sub):
                    walk(sub, here + "/")
                for v in sub.weights:
                    if id(v) not in seen:
                        add(f"{here}/{_relative_path(v, sub)}", v)

        walk(self.model, "")
        for v in self.model.weights:  # the model's own weights (subclassed models' add_weight)
            if id(v) not in seen:
                add(_relative_path(v, self.model), v)
        return named


def _sublayers(layer: Any) -> list[Any]:
    """The public ``.layers`` of a model (nested models included); ``[]`` for a plain layer."""
    layers = getattr(layer, "layers", None)
    return list(layers) if isinstance(layers, (list, tuple)) else []


def _relative_path(variable: Any, layer: Any) -> str:
    """The variable's path below ``layer`` with Keras's automatic counters removed.

    ``sequential_1/dense_3/kernel`` relative to the layer ``dense_3`` is
    ``kernel``; a custom layer's sublayer ``my_layer/dense_7/bias`` becomes
    ``dense/bias``; an unnamed ``add_weight`` (``variable_2``) becomes ``variable``.
    Sublayer names lose a trailing ``_<digits>`` even when a user chose it, as it
    cannot be told apart from a counter; clashes get ``#1``, ``#2`` suffixes.
    """
    parts = str(getattr(variable, "path", variable.name)).split("/")
    if layer.name in parts[:-1]:
        parts = parts[parts.index(layer.name) + 1 :]
    else:
        parts = parts[-1:]
    *sublayers, name = parts
    if _AUTO_VARIABLE.fullmatch(name):
        name = "variable"
    return "/".join([_COUNTER.sub("", p) for p in sublayers] + [name])


def _normalized_config(model: Any) -> Any:
    """The model's config with layer names replaced by their order of appearance.

    Layer names appear as ``"name"`` and in functional models' wiring
    (``keras_history``, ``input_layers``): replacing each distinct name by
    ``"#<k>"`` keeps the wiring and drops the process-specific counter.
    ``trainable`` is dropped too: freezing layers while training does not change
    what is exchanged.
    """
    names = {layer.name for layer in _all_layers(model)}
    config = _config(model)
    if not (isinstance(config, dict) and "layers" in config):
        # Subclassed models (and single layers) describe little of themselves; their layers do.
        config = {
            "config": config,
            "layers": [{"class_name": type(layer).__name__, "config": _config(layer)} for layer in _sublayers(model)],
        }
    canonical: dict[str, str] = {}

    def normalize(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): normalize(v) for k, v in value.items() if k != "trainable"}
        if isinstance(value, (list, tuple)):
            return [normalize(v) for v in value]
        if isinstance(value, str) and value in names:
            return canonical.setdefault(value, f"#{len(canonical)}")
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return without_addresses(repr(value))

    return normalize(config)


def _config(layer: Any) -> Any:
    """``layer.get_config()``, or ``None`` for layers that cannot describe themselves."""
    try:
        return layer.get_config()
    except Exception:  # custom layers raise anything here; their weights' layout is still hashed
        return None


def _all_layers(model: Any) -> list[Any]:
    """Every layer in the model, nested ones and input layers included."""
    flatten = getattr(model, "_flatten_layers", None)
    if callable(flatten):
        try:
            return list(flatten(include_self=True, recursive=True))
        except TypeError:
            pass
    found = [model]
    for layer in _sublayers(model):
        found.extend(_all_layers(layer))
    return found


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype))
