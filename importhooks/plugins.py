"""Finding, loading, ordering and guarding plugins.

Built-in plugins (:data:`DEFAULT_PLUGINS`), site plugins from the
``importhooks.plugins`` entry-point group and modules named in
``[plugins] enabled`` all go through one call, :meth:`PluginRegistry.register`.
Nothing here runs at import time: a registry exists only when an embedder, the CLI
or a test builds one. Building one imports every built-in plugin module, but those
modules load their heavy dependencies (oslo.utils' format inspectors, libarchive,
libmagic, zstandard, defusedxml, oslo.concurrency) in the functions that use them,
so a registry costs milliseconds and an import loads only what its data needs.

Every hook implementation is registered behind a *guard* that names the plugin
while it runs (so findings are attributed to it) and records a failure in the run's
findings the moment it raises, before any other plugin's hook wrapper can see, and
swallow, the exception.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import importlib
import inspect
import json
import types
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .context import CURRENT_PLUGIN
from .errors import PluginLoadError
from .settings import PluginOptions, Settings

DEFAULT_PLUGINS: tuple[str, ...] = (
    "importhooks_plugins.policy.claims",
    "importhooks_plugins.policy.size_limits",
    "importhooks_plugins.containers.content_type",
    "importhooks_plugins.formats.disk_format",
    "importhooks_plugins.formats.qcow2",
    "importhooks_plugins.formats.vmdk",
    "importhooks_plugins.formats.vdi",
    "importhooks_plugins.formats.qed",
    "importhooks_plugins.formats.luks",
    "importhooks_plugins.formats.qemu_img",
    "importhooks_plugins.formats.vhd",
    "importhooks_plugins.formats.vhdx",
    "importhooks_plugins.containers.zip",
    "importhooks_plugins.containers.ovf",
    "importhooks_plugins.containers.ova",
    "importhooks_plugins.containers.compression",
    "importhooks_plugins.containers.conversion",
    "importhooks_plugins.guest.os_type",
    "importhooks_plugins.formats.nested_headers",
    "importhooks_plugins.policy.properties",
    "importhooks_plugins.policy.checksums",
    "importhooks_plugins.policy.notify_log",
)
ENTRY_POINT_GROUP = "importhooks.plugins"

#: Called by a guard when the hook implementation it wraps raises; set per run.
FAILURE_RECORDER: contextvars.ContextVar[Callable[[str, BaseException], None] | None] = contextvars.ContextVar(
    "importhooks_failure_recorder", default=None
)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """Where a plugin came from, for ``importhooks plugins`` and the docs."""

    name: str
    source: str  # "builtin", "entry point", "config" or "direct"
    module: str
    file: str | None
    distribution: str | None = None
    version: str | None = None
    enabled: bool = True


def _record_failure(plugin_name: str, exc: BaseException) -> None:
    if getattr(exc, "__importhooks_recorded__", False):
        return
    recorder = FAILURE_RECORDER.get()
    if recorder is not None:
        recorder(plugin_name, exc)
    try:
        exc.__importhooks_recorded__ = True  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        pass


def _guard_call(function: Callable[..., Any], plugin_name: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def guarded(*args: Any) -> Any:
        token = CURRENT_PLUGIN.set(plugin_name)
        try:
            return function(*args)
        except BaseException as exc:
            _record_failure(plugin_name, exc)
            raise
        finally:
            CURRENT_PLUGIN.reset(token)

    return guarded


def _guard_wrapper(function: Callable[..., Any], plugin_name: str) -> Callable[..., Any]:
    """Guard a generator hook wrapper: name the plugin during each of its steps."""

    @functools.wraps(function)
    def guarded(*args: Any) -> Generator[Any, Any, Any]:
        generator = function(*args)
        value = _step(plugin_name, generator.send, None, None)
        while True:
            try:
                sent = yield value
            except BaseException as thrown:  # noqa: BLE001 - handed on to the wrapped generator
                try:
                    value = _step(plugin_name, generator.throw, thrown, thrown)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = _step(plugin_name, generator.send, sent, None)
                except StopIteration as stop:
                    return stop.value

    return guarded


def _step(plugin_name: str, action: Callable[[Any], Any], argument: Any, thrown: BaseException | None) -> Any:
    """Advance a guarded wrapper one step, naming its plugin, recording its own failures."""
    token = CURRENT_PLUGIN.set(plugin_name)
    try:
        return action(argument)
    except StopIteration:
        raise
    except BaseException as exc:
        if exc is not thrown:  # re-raising what was thrown in is not the wrapper's failure
            _record_failure(plugin_name, exc)
        raise
    finally:
        CURRENT_PLUGIN.reset(token)


def _guarded_proxies(plugin: object, name: str, project: str) -> tuple[types.ModuleType, types.ModuleType]:
    """Module objects holding guarded copies of ``plugin``'s hook implementations.

    The first holds every implementation but the ``trylast`` ones, the second those:
    pluggy calls ``trylast`` implementations in registration order and all others in
    reverse, so :func:`build_registry` registers the two halves in opposite orders to
    give every group the same, documented call order.
    """
    main = types.ModuleType(f"importhooks.guarded.{name}")
    late = types.ModuleType(f"importhooks.guarded.{name}.trylast")
    marker = f"{project}_impl"
    for attr in dir(plugin):
        if not attr.startswith(f"{project}_"):
            continue
        function = getattr(plugin, attr, None)
        opts = getattr(function, marker, None)
        if function is None or not isinstance(opts, dict):
            continue
        is_wrapper = opts.get("wrapper") or opts.get("hookwrapper")
        guard = _guard_wrapper if is_wrapper and inspect.isgeneratorfunction(function) else _guard_call
        setattr(late if opts.get("trylast") else main, attr, guard(function, name))
    for proxy in (main, late):
        proxy.__importhooks_plugin__ = plugin  # type: ignore[attr-defined]
        proxy.__importhooks_name__ = name  # type: ignore[attr-defined]
    return main, late


def _has_hooks(proxy: types.ModuleType, project: str) -> bool:
    return any(attr.startswith(f"{project}_") for attr in vars(proxy))


class PluginRegistry:
    """A pluggy plugin manager for ``importhooks`` plus where each plugin came from."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def register(self, plugin: object, name: str, *, source: str = "direct", distribution: str | None = None,
                 version: str | None = None) -> bool:
        """Register one plugin (module or object) under ``name``; the one call for every plugin.

        Returns ``False`` if ``[plugins] disabled`` names it. A name already taken
        raises :class:`~importhooks.errors.PluginLoadError`: plugins never shadow
        each other silently.
        """
        late = self._register(plugin, name, source=source, distribution=distribution, version=version)
        if late is not None:
            self._register_proxy(late, name)
        return name in self.infos and self.infos[name].enabled

    def _register(self, plugin: object, name: str, *, source: str, distribution: str | None = None,
                  version: str | None = None) -> types.ModuleType | None:
        """Register all but the ``trylast`` implementations; return the proxy holding those, if any."""
        if name in self.infos:
            other = self.infos[name]
            raise PluginLoadError(f"plugin name {name!r} from {source} collides with the {other.source} plugin "
                                  f"from {other.module}")
        module = getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name, source, module, getattr(plugin, "__file__", None), distribution, version)
        if name in self.settings.plugins.disabled:
            self.infos[name] = PluginInfo(**{**_asdict(info), "enabled": False})
            return None
        main, late = _guarded_proxies(plugin, name, hookspecs.PROJECT_NAME)
        self._register_proxy(main, name)
        self.infos[name] = info
        return late if _has_hooks(late, hookspecs.PROJECT_NAME) else None

    def _register_proxy(self, proxy: types.ModuleType, name: str) -> None:
        pluggy_name = proxy.__name__.removeprefix("importhooks.guarded.")
        try:
            self.pm.register(proxy, name=pluggy_name)
            self.pm.check_pending()
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.pm.is_registered(proxy):
                self.pm.unregister(proxy)
            raise PluginLoadError(f"plugin {name!r} is invalid: {exc}") from None

    def plugin_object(self, name: str) -> object | None:
        proxy = self.pm.get_plugin(name)
        return getattr(proxy, "__importhooks_plugin__", None)

    def declared_options(self) -> dict[str, PluginOptions]:
        """Each enabled plugin's ``importhooks_plugin_options``, by plugin name, in call order."""
        declared: dict[str, PluginOptions] = {}
        for impl in reversed(self.pm.hook.importhooks_plugin_options.get_hookimpls()):
            spec = impl.function()
            if isinstance(spec, PluginOptions):
                declared[str(getattr(impl.plugin, "__importhooks_name__", impl.plugin_name))] = spec
        return declared

    def hook_order(self) -> dict[str, list[str]]:
        """For each hook, the plugins implementing it, in the order they are called."""
        order: dict[str, list[str]] = {}
        for hook_name in sorted(n for n in dir(self.pm.hook) if n.startswith("importhooks_")):
            caller = getattr(self.pm.hook, hook_name)
            impls = reversed(caller.get_hookimpls())  # pluggy calls the last one first
            order[hook_name] = [_describe(impl) for impl in impls]
        return order


def _describe(impl: pluggy.HookImpl) -> str:
    flags = [flag for flag in ("wrapper", "hookwrapper", "tryfirst", "trylast") if getattr(impl, flag)]
    name = getattr(impl.plugin, "__importhooks_name__", impl.plugin_name)
    return str(name) + (f" [{', '.join(flags)}]" if flags else "")


def toml_value(value: object) -> str:
    """An option's value as it is written in the settings file (sizes in bytes, durations in seconds)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _asdict(info: PluginInfo) -> dict[str, Any]:
    return {f: getattr(info, f) for f in info.__dataclass_fields__}


def _import(module_name: str, what: str) -> types.ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a load error
        raise PluginLoadError(f"cannot import {what} {module_name!r}: {exc}") from None


def _candidates(settings: Settings, extra: Iterable[tuple[str, object]]) -> list[tuple[object, str, dict[str, Any]]]:
    found: list[tuple[object, str, dict[str, Any]]] = []
    for module_name in DEFAULT_PLUGINS:
        found.append((_import(module_name, "built-in plugin"), module_name.rsplit(".", 1)[1], {"source": "builtin"}))
    if settings.plugins.entry_points:
        import importlib.metadata  # only when entry points are wanted

        eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        for ep in eps:
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is a load error
                raise PluginLoadError(f"cannot load entry point {ep.name!r} ({ep.value}): {exc}") from None
            dist = ep.dist
            found.append((plugin, ep.name, {"source": "entry point", "distribution": dist.name if dist else None,
                                            "version": dist.version if dist else None}))
    for module_name in settings.plugins.enabled:
        found.append((_import(module_name, "plugin"), module_name, {"source": "config"}))
    for name, plugin in extra:
        found.append((plugin, name, {"source": "direct"}))
    return found


def build_registry(settings: Settings, extra: Iterable[tuple[str, object]] = ()) -> PluginRegistry:
    """Build the registry a pipeline runs with: built-ins, entry points, configured and ``extra`` plugins.

    Call order within each tryfirst / normal / trylast group: the names in
    ``[plugins] order`` first, in that order, then built-ins, then site plugins by
    name, then configured modules, then ``extra`` in the order given.
    """
    registry = PluginRegistry(settings)
    found = _candidates(settings, extra)
    rank = {name: i for i, name in enumerate(settings.plugins.order)}
    call_order = sorted(range(len(found)), key=lambda i: (rank.get(found[i][1], len(rank)), i))
    # pluggy calls the most recently registered implementation first (trylast ones
    # excepted, which it calls in registration order): register in reverse, then the
    # trylast halves forwards.
    late: list[tuple[types.ModuleType, str]] = []
    for index in reversed(call_order):
        plugin, name, meta = found[index]
        proxy = registry._register(plugin, name, **meta)
        if proxy is not None:
            late.append((proxy, name))
    for proxy, name in reversed(late):
        registry._register_proxy(proxy, name)
    return registry
