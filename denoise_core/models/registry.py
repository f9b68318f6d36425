"""Model registry: architectures register a factory by name; `create_model` builds one."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULT_ARGS: dict[str, dict[str, Any]] = {}


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def create_model(name: str, **kwargs: Any) -> nn.Module:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown architecture {name!r}; valid names: {', '.join(list_models())}"
        ) from None
    model = factory(**kwargs)
    setattr(model, "arch_name", name)  # plain attributes beside the module's parameters
    setattr(model, "arch_args", dict(kwargs))
    return model
