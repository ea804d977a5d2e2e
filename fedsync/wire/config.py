"""Per-round configuration, coordinator to devices (Flower's ``on_fit_config_fn``).

``Federated(..., config=...)`` computes a small dict for each round: a learning
rate schedule, local epochs, FedProx's ``mu``. It travels with the submission
(and the evaluation) as compact JSON in the ``X-Fedsync-Config`` header
(:data:`fedsync.wire.http.CONFIG_HEADER`, docs/protocol.md), is checked on the
device before the body is read, and reaches ``train(model, config)`` when
``train`` takes a second argument.

A configuration is a JSON object of at most :data:`MAX_CONFIG_KEYS` keys of 1 to
:data:`MAX_CONFIG_KEY` characters, each mapped to a value: a scalar (a string, a
boolean, an integer in ``[-2**53, 2**53]`` or a finite float), a list of at most
:data:`MAX_CONFIG_ITEMS` scalars, or a mapping (keys as above, at most
:data:`MAX_CONFIG_KEYS`) of scalars and lists of scalars; at most
:data:`MAX_CONFIG_BYTES` bytes as sent. One level of mapping and no list of lists:
a device in any language reads it without a schema, and a header stays a header
(a device list for a straggler experiment, ``{"stragglers": [3, 17, 22]}``, or an
optimizer's settings, ``{"optimizer": {"name": "sgd", "momentum": 0.9}}``).

``Federated(config=...)`` may be a dict, ``config(server_round) -> dict``, or
``config(server_round, device) -> dict`` for a configuration of each sampled
device (``device``: its URL), detected by :func:`takes_extra` as ``train(model,
config)`` is.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from .._util.json import first_duplicate, shown

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_KEYS",
    "MAX_CONFIG_KEY",
    "MAX_CONFIG_ITEMS",
    "Config",
    "ConfigSource",
    "checked_config",
    "encode_config",
    "decode_config",
    "round_config",
    "per_device",
    "takes_extra",
    "takes_keyword",
]

MAX_CONFIG_BYTES = 8192
"""The longest configuration, in bytes of its header value (compact ASCII JSON)."""

MAX_CONFIG_KEYS = 64
"""The most keys a configuration may hold."""

MAX_CONFIG_KEY = 64
"""The longest key, in characters."""

MAX_CONFIG_ITEMS = 256
"""The most items a list value may hold."""

_LARGEST_INT = 2**53  # exact in float64, so JSON readers in any language agree on it

Scalar = str | bool | int | float
Value = Scalar | list[Scalar] | dict[str, Scalar | list[Scalar]]
Config = dict[str, Value]
ConfigSource = Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | Callable[[int, str], Mapping[str, Any]] | None
"""What ``Federated(config=...)`` takes: a dict, ``config(server_round)``, ``config(server_round, device)``, or None."""

_EXAMPLE = '{"lr": 0.01, "epochs": 1, "optimizer": {"name": "sgd", "momentum": 0.9}, "stragglers": [3, 17]}'


def checked_config(value: Any, what: str = "config") -> Config:
    """``value`` as a configuration: a mapping of short string keys to values (see the module's text).

    Takes Python and numpy scalars (``np.float32(0.1)`` becomes ``0.1``), lists or
    tuples of them (as lists), and one level of mapping; numbers must be finite,
    integers within ``[-2**53, 2**53]``.

    Raises:
        ValueError: naming ``what``, the bad key and value, and what is accepted.
        TypeError: ``value`` is not a mapping.
    """
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{what} must be a dict of names to str, bool, int or float values (or lists of them, or one level of "
            f"dict), got {type(value).__name__}; e.g. {_EXAMPLE}"
        )
    return {key: _value(item, f"{what}[{key!r}]", nested=True) for key, item in _items(value, what)}


def _items(value: Mapping[Any, Any], what: str) -> list[tuple[str, Any]]:
    """``value``'s items, each key checked; at most :data:`MAX_CONFIG_KEYS` of them."""
    if len(value) > MAX_CONFIG_KEYS:
        raise ValueError(f"{what} has {len(value)} keys, more than MAX_CONFIG_KEYS ({MAX_CONFIG_KEYS}); send fewer")
    for key in value:
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_CONFIG_KEY or not key.isprintable():
            raise ValueError(f"{what}: key {shown(key)} must be a string of 1 to {MAX_CONFIG_KEY} printable characters")
    return list(value.items())


def _value(item: Any, what: str, *, nested: bool) -> Value:
    """A scalar, a list of scalars, or (``nested``) a mapping of scalars and lists of scalars."""
    if isinstance(item, (list, tuple)):
        if len(item) > MAX_CONFIG_ITEMS:
            raise ValueError(
                f"{what} is a list of {len(item)} items, more than MAX_CONFIG_ITEMS ({MAX_CONFIG_ITEMS}); send fewer"
            )
        return [_scalar(x, f"{what}[{i}]", inner="a list") for i, x in enumerate(item)]
    if isinstance(item, Mapping):
        if not nested:
            raise ValueError(
                f"{what} is a dict inside a dict; a config holds one level of dict (of scalars and lists of "
                f"scalars), e.g. {_EXAMPLE}"
            )
        return {key: _value(x, f"{what}[{key!r}]", nested=False) for key, x in _items(item, what)}  # type: ignore[misc]
    return _scalar(item, what)


def _scalar(item: Any, what: str, inner: str = "") -> Scalar:
    if isinstance(item, str):
        return item
    if isinstance(item, bool) or (type(item).__module__ == "numpy" and type(item).__name__ in ("bool", "bool_")):
        return bool(item)  # numpy's bool is no Python bool, nor a number
    if isinstance(item, numbers.Integral):
        number = int(item)
        if not -_LARGEST_INT <= number <= _LARGEST_INT:
            raise ValueError(
                f"{what} = {shown(item)}: integers must lie in [-2**53, 2**53] (exact in every JSON reader)"
            )
        return number
    if isinstance(item, numbers.Real):
        real = float(item)
        if not math.isfinite(real):
            raise ValueError(f"{what} = {shown(item)}: numbers must be finite")
        return real
    where = f"items of {inner}" if inner else "values"
    raise ValueError(
        f"{what} is a {type(item).__name__} ({shown(item)}); {where} must be str, bool, int or float"
        + ("" if inner else ", a list of them or a dict of them")
        + f", e.g. {_EXAMPLE}"
    )


def encode_config(config: Mapping[str, Any]) -> str:
    """The header value for ``config``: compact ASCII JSON, checked first.

    Raises:
        ValueError, TypeError: as :func:`checked_config`; or the JSON is over
            :data:`MAX_CONFIG_BYTES` bytes.
    """
    text = json.dumps(checked_config(config), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(
            f"config is {len(text)} bytes as JSON, over MAX_CONFIG_BYTES ({MAX_CONFIG_BYTES}); send shorter values"
        )
    return text


def decode_config(text: str) -> Config:
    """A peer's header value as a configuration; checked before anything uses it.

    Raises:
        ValueError: the value is over :data:`MAX_CONFIG_BYTES`, not ASCII, not a
            JSON object, has a duplicate key, a ``null``, nesting deeper than
            :func:`checked_config` takes, a non-finite number, or breaks a bound.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"the config is {len(text)} bytes, over the {MAX_CONFIG_BYTES} accepted")
    if not text.isascii():
        raise ValueError("the config must be ASCII JSON (escape other characters as \\uXXXX)")
    try:
        document = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("the config is nested too deeply; a config holds one level of object") from None
    except _Refused as exc:
        raise ValueError(f"the config {exc}") from None
    except ValueError as exc:
        raise ValueError(f"the config is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise ValueError(f"the config must be a JSON object, got {type(document).__name__}; e.g. {_EXAMPLE}")
    try:
        return checked_config(document)
    except TypeError as exc:  # cannot happen for a dict; kept one error type for peers
        raise ValueError(str(exc)) from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    duplicate = first_duplicate(pairs)
    if duplicate is not None:
        raise _Refused(f"has a duplicate key {shown(duplicate)}")
    for key, value in pairs:
        if value is None:
            raise _Refused(f"key {shown(key)} holds null; values must be strings, numbers, booleans, or lists of them")
    return dict(pairs)


class _Refused(ValueError):
    """A well-formed JSON value the config does not accept."""


def _no_constant(name: str) -> None:
    raise _Refused(f"holds {name}, not a finite number")


def _bounded_int(digits: str) -> int:
    # Bounded before converting: a peer's thousands of digits cost nothing.
    if len(digits.lstrip("-")) > 16:
        raise _Refused(f"holds the integer {digits[:20]}..., outside [-2**53, 2**53]")
    return int(digits)


def round_config(source: ConfigSource, repetition: int, strategy: Any = None, device: str | None = None) -> Config:
    """The configuration of round ``repetition``: the strategy's keys, overridden by the user's.

    ``source`` is ``Federated(config=...)``: ``None``, a mapping, ``source(repetition) ->
    mapping``, or ``source(repetition, device) -> mapping`` (:func:`per_device`), called
    with ``device``, the URL of the device the configuration is for. ``strategy`` may
    offer ``configure(server_round: int) -> mapping`` (keys a strategy needs on the
    devices, e.g. FedProx's ``mu``); the user's keys win over the strategy's.

    Raises:
        ValueError, TypeError: a bad key or value, naming it and who returned it
            (see :func:`checked_config`), or a configuration over the header's size.
    """
    merged: Config = {}
    configure = getattr(strategy, "configure", None)
    if callable(configure):
        extra = configure(repetition)
        if extra is not None:
            merged.update(checked_config(extra, f"{type(strategy).__name__}.configure({repetition})"))
    if source is not None:
        if callable(source):
            function: Callable[..., Any] = source
            if per_device(function):
                what, value = f"config({repetition}, {device!r})", function(repetition, device)
            else:
                what, value = f"config({repetition})", function(repetition)
        else:
            what, value = "config", source
        merged.update(checked_config(value, f"the round's {what}"))
    if merged:
        encode_config(merged)  # fail here, naming the size, not on every device
    return merged


def per_device(source: ConfigSource) -> bool:
    """Whether ``Federated(config=source)`` configures each device: ``config(server_round, device)``.

    Read from the signature as :func:`takes_extra` reads ``train(model, config)``: a
    second positional parameter without a default, or one called ``device``.
    """
    return callable(source) and takes_extra(source, 1, "device")


def takes_extra(function: Callable[..., Any], given: int, name: str = "config") -> bool:
    """Whether ``function`` takes a positional argument after its first ``given`` ones.

    True when that parameter has no default, is called ``name``, or is ``*args``:
    so ``train(model, config)`` gets the configuration, while ``train(model)``
    and ``train(model, epochs=3)`` are called as before.
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # builtins and some C callables: no signature to read
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) > given:
        extra = positional[given]
        return extra.default is inspect.Parameter.empty or extra.name == name
    return any(p.kind is p.VAR_POSITIONAL for p in parameters)


def takes_keyword(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` has a parameter called ``name`` that can be passed by keyword (not ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins and some C callables: no signature to read
        return False
    found = parameters.get(name)
    return found is not None and found.kind in (found.POSITIONAL_OR_KEYWORD, found.KEYWORD_ONLY)
