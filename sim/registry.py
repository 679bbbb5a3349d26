"""Small name -> implementation registries, one per policy kind.

Models: the set of named policies (arrival processes, length distributions, cost models,
queue orders, ...) a config may refer to. A policy is one decorated class or function in
one file; its name is checked when the config is loaded, and its parameters are checked
against its signature so that a typo is an error naming the key.

Ignores: plugin discovery via entry points (import the module that registers it).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, Mapping, TypeVar

from sim.config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            obj.registry_name = name  # type: ignore[attr-defined]
            return obj
        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str, key: str = "name") -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(key, f"unknown {self.kind} '{name}'; expected one of {self.names()}") from None

    def build(self, name: str, params: Mapping[str, Any] | None = None, key: str = "", **context: Any) -> T:
        """Instantiate ``name`` with ``params`` (checked against its signature) plus context."""
        factory = self.get(name, f"{key}.name" if key else "name")
        params = dict(params or {})
        sig = inspect.signature(factory)
        accepted = {p.name for p in sig.parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        has_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        pkey = f"{key}.params" if key else "params"
        for k in params:
            if k not in accepted and not has_var_kw or k in context:
                allowed = sorted(accepted - set(context))
                raise ConfigError(f"{pkey}.{k}", f"unknown parameter of {self.kind} '{name}'; expected {allowed}")
        for p in sig.parameters.values():
            if (p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                    and p.name not in params and p.name not in context):
                raise ConfigError(f"{pkey}.{p.name}", f"missing required parameter of {self.kind} '{name}'")
        try:
            return factory(**params, **{k: v for k, v in context.items() if k in accepted or has_var_kw})
        except ConfigError as e:
            if key and not e.key.startswith(key):
                raise ConfigError(f"{pkey}.{e.key}", e.message) from None
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(pkey, f"{self.kind} '{name}': {e}") from None
