"""The plugin registry: adapters found by specs token, transports found by URL scheme.

Plugins are modules named by entry points in the ``fedsync`` group (plus the
built-in ones, which register through the same hook). They load lazily, once,
on the first call to :func:`adapters`, :func:`adapter_for`, :func:`describe`,
:func:`transports` or :func:`transport_for`,
never at ``import fedsync``. ``FEDSYNC_LOAD_PLUGINS`` limits which entry points
load (comma-separated names; empty: none), and ``FEDSYNC_TRACE_PLUGINS=1``
prints every hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from ..errors import AdapterNotFound, PluginError
from ..protocol import FedData
from . import hookspecs

if TYPE_CHECKING:
    from ..transports.remote import Remote

__all__ = [
    "Adapter",
    "TransportEntry",
    "RemoteFactory",
    "adapters",
    "loaded",
    "adapter_for",
    "describe",
    "describe_transports",
    "plugin_manager",
    "remote",
    "reset",
    "transports",
    "transport_for",
    "ENTRY_POINT_GROUP",
]

logger = logging.getLogger("fedsync.plugins")

ENTRY_POINT_GROUP = "fedsync"
DEFAULT_PLUGINS = (
    "fedsync.data.arrays",
    "fedsync.data.bundle",
    "fedsync.transports.remote",
    "fedsync.transports.local",
    "fedsync.transports.dial.transport",
)
"""Built-in plugin modules: the core dogfoods its own hook."""

EXTRAS = {"torch": "torch", "keras": "keras"}
"""Tokens whose adapters ship as extras of the fedsync distribution."""

_TOKEN = re.compile(r"^[a-z0-9_.-]+$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


RemoteFactory = Callable[..., "Remote"]
"""A registered transport's factory: ``factory(url, **options)``, the
:class:`~fedsync.transports.remote.Remote` of the device at ``url`` (``Remote`` itself for ``http``)."""


@dataclass(frozen=True)
class TransportEntry:
    """One registered transport: ``factory(url, **options) -> Remote`` for URLs of ``scheme``, and its plugin."""

    scheme: str
    factory: RemoteFactory
    plugin: str


@dataclass(frozen=True)
class Adapter:
    """One registered adapter and where it came from."""

    token: str
    cls: type[FedData]
    plugin: str
    package: str | None
    version: str | None

    @property
    def requires(self) -> tuple[str, ...]:
        """Modules the adapter's framework needs (its class's ``requires``)."""
        return tuple(getattr(self.cls, "requires", ()))

    @property
    def importable(self) -> bool:
        """Whether the framework is installed, checked without importing it."""
        return all(_installed(module) for module in self.requires)


def _installed(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _Registry:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.manager: pluggy.PluginManager | None = None
        self.adapters: dict[str, Adapter] = {}
        self.sources: dict[str, tuple[str | None, str | None]] = {}
        self.transports: dict[str, TransportEntry] = {}

    def load(self) -> pluggy.PluginManager:
        with self.lock:
            if self.manager is None:
                manager = pluggy.PluginManager("fedsync")
                manager.add_hookspecs(hookspecs)
                if os.environ.get("FEDSYNC_TRACE_PLUGINS"):
                    manager.trace.root.setwriter(lambda text: sys.stderr.write(text))
                    manager.enable_tracing()
                for name in DEFAULT_PLUGINS:
                    manager.register(importlib.import_module(name), name=name)
                    self.sources[name] = ("fedsync", _version("fedsync"))
                self._load_entry_points(manager)
                self.adapters = self._collect(manager)
                self.transports = self._collect_transports(manager)
                self.manager = manager
            return self.manager

    def _load_entry_points(self, manager: pluggy.PluginManager) -> None:
        allowed = os.environ.get("FEDSYNC_LOAD_PLUGINS")
        names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if names is not None and entry_point.name not in names:
                continue
            if manager.has_plugin(entry_point.name):
                first = self.sources.get(entry_point.name, (None, None))[0]
                if entry_point.dist is not None and entry_point.dist.name != first:
                    logger.warning(
                        "fedsync plugin %r of %s is shadowed by the one of %s, found first on sys.path",
                        entry_point.name,
                        entry_point.dist.name,
                        first,
                    )
                continue  # first on sys.path wins, as for imports
            try:
                plugin = entry_point.load()
            except Exception as exc:  # one broken plugin must not break the others
                logger.warning("fedsync plugin %r (%s) failed to load: %s", entry_point.name, entry_point.value, exc)
                continue
            manager.register(plugin, name=entry_point.name)
            dist = entry_point.dist
            self.sources[entry_point.name] = (dist.name if dist else None, dist.version if dist else None)

    def _collect(self, manager: pluggy.PluginManager) -> dict[str, Adapter]:
        found: dict[str, Adapter] = {}
        impls = manager.hook.register_adapters.get_hookimpls()
        for impl in impls:
            plugin = impl.plugin_name

            def register(token: str, cls: type[FedData], _plugin: str = plugin) -> None:
                if not isinstance(token, str) or not _TOKEN.match(token):
                    raise PluginError(
                        f"plugin {_plugin!r}: register_adapters(register) called register({token!r}, ...); "
                        "a token is a lowercase word like 'torch' ([a-z0-9_.-]+)"
                    )
                if not (isinstance(cls, type) and issubclass(cls, FedData)):
                    raise PluginError(
                        f"plugin {_plugin!r}: register({token!r}, {cls!r}) needs a FedData subclass, "
                        "e.g. register('jax', FedJax)"
                    )
                if token in found:
                    raise PluginError(
                        f"adapter token {token!r} is registered by both plugin {found[token].plugin!r} "
                        f"and plugin {_plugin!r}; uninstall one, or limit loading with FEDSYNC_LOAD_PLUGINS"
                    )
                package, version = self.sources.get(_plugin, (None, None))
                found[token] = Adapter(token, cls, _plugin, package, version)

            # Each plugin is called through pluggy's own hook caller (so FEDSYNC_TRACE_PLUGINS
            # traces it), one plugin at a time, so a registration is credited to its plugin.
            others = [other.plugin for other in impls if other.plugin_name != plugin]
            manager.subset_hook_caller("register_adapters", remove_plugins=others)(register=register)
        return found

    def _collect_transports(self, manager: pluggy.PluginManager) -> dict[str, TransportEntry]:
        found: dict[str, TransportEntry] = {}
        impls = manager.hook.register_transports.get_hookimpls()
        for impl in impls:
            plugin = impl.plugin_name

            def register(scheme: str, factory: RemoteFactory, _plugin: str = plugin) -> None:
                if not isinstance(scheme, str) or not _SCHEME.match(scheme):
                    raise PluginError(
                        f"plugin {_plugin!r}: register_transports(register) called register({scheme!r}, ...); "
                        "a scheme is a lowercase URL scheme like 'grpc' ([a-z][a-z0-9+.-]*)"
                    )
                if not callable(factory):
                    raise PluginError(
                        f"plugin {_plugin!r}: register({scheme!r}, {factory!r}) needs a factory(url, **options) "
                        "-> remote, "
                        "e.g. register('grpc', GrpcRemote)"
                    )
                if scheme in found:
                    raise PluginError(
                        f"transport scheme {scheme!r} is registered by both plugin {found[scheme].plugin!r} "
                        f"and plugin {_plugin!r}; uninstall one, or limit loading with FEDSYNC_LOAD_PLUGINS"
                    )
                found[scheme] = TransportEntry(scheme, factory, _plugin)

            others = [other.plugin for other in impls if other.plugin_name != plugin]
            manager.subset_hook_caller("register_transports", remove_plugins=others)(register=register)
        return found


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_registry = _Registry()


def loaded() -> bool:
    """Whether the plugins are loaded yet (they load lazily, on the first lookup; never at import)."""
    return _registry.manager is not None


def plugin_manager() -> pluggy.PluginManager:
    """The loaded plugin manager (loads plugins on first call)."""
    return _registry.load()


def adapters() -> dict[str, type[FedData]]:
    """Every registered adapter class by token, e.g. ``{"arrays": FedArrays, "torch": FedTorch}``."""
    _registry.load()
    return {token: adapter.cls for token, adapter in _registry.adapters.items()}


def describe() -> list[dict[str, Any]]:
    """Every adapter: token, cls, plugin, package, version, importable (framework installed), extra."""
    _registry.load()
    return [
        {
            "token": a.token,
            "cls": a.cls,
            "plugin": a.plugin,
            "package": a.package,
            "version": a.version,
            "importable": a.importable,
            "extra": EXTRAS.get(a.token),
        }
        for a in sorted(_registry.adapters.values(), key=lambda a: a.token)
    ]


def adapter_for(specs: str) -> type[FedData]:
    """The adapter class for a specs string such as ``"torch:sha256:9f2c..."``.

    Raises:
        AdapterNotFound: no installed plugin registers the token (a ``LookupError``).
    """
    _registry.load()
    token = specs.split(":", 1)[0]
    adapter = _registry.adapters.get(token)
    if adapter is None:
        installed = ", ".join(sorted(_registry.adapters)) or "none"
        if token in EXTRAS:
            hint = f"pip install 'fedsync[{EXTRAS[token]}]'"
        else:
            hint = (
                f"install the package that provides the {token!r} adapter "
                "(it registers through the 'fedsync' entry-point group)"
            )
        raise AdapterNotFound(
            f"no adapter for specs {specs!r} (token {token!r}); installed: {installed}. To fix: {hint}"
        )
    return adapter.cls


def transports() -> dict[str, RemoteFactory]:
    """Every registered transport factory by URL scheme, e.g. ``{"http": Remote, "local": LocalRemote}``."""
    _registry.load()
    return {scheme: transport.factory for scheme, transport in _registry.transports.items()}


def describe_transports() -> list[dict[str, Any]]:
    """Every transport: scheme, factory, plugin, package, version (sorted by scheme)."""
    _registry.load()
    return [
        {"scheme": t.scheme, "factory": t.factory, "plugin": t.plugin,
         "package": _registry.sources.get(t.plugin, (None, None))[0],
         "version": _registry.sources.get(t.plugin, (None, None))[1]}
        for t in sorted(_registry.transports.values(), key=lambda t: t.scheme)
    ]  # fmt: skip


def transport_for(url: str) -> RemoteFactory:
    """The factory ``factory(url, **options) -> remote`` for ``url``'s scheme.

    Raises:
        ValueError: ``url`` has no ``scheme://`` or no installed plugin registers
            its scheme (the message lists the registered schemes).
    """
    _registry.load()
    scheme, separator, _ = url.partition("://") if isinstance(url, str) else ("", "", "")
    transport = _registry.transports.get(scheme.lower()) if separator else None
    if transport is None:
        known = ", ".join(f"{s}://" for s in sorted(_registry.transports)) or "none"
        raise ValueError(
            f"no transport for remote {str(url)[:200]!r}: expected a URL starting with one of {known}; "
            "e.g. 'http://127.0.0.1:8000', or install the package registering that scheme"
        )
    return transport.factory


def remote(url: str, **options: Any) -> Remote:
    """The remote for ``url``, built by its scheme's transport: ``transport_for(url)(url, **options)``
    (a :class:`fedsync.transports.remote.Remote` over that transport; see :func:`hookspecs.register_transports`)."""
    return transport_for(url)(url, **options)


def reset() -> None:
    """Forget loaded plugins, so the next call loads them again (for tests)."""
    with _registry.lock:
        _registry.manager = None
        _registry.adapters = {}
        _registry.sources = {}
        _registry.transports = {}
