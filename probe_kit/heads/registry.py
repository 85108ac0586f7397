"""``HEAD_TYPES``: exit-head types by name. The CLI's ``--head`` choices, the trainer, the exits folder and the
evaluation all look types up here; ``det`` and ``dense`` are registered below like any plug-in.

    from probe_kit.heads import ExitHead, register_head_type

    class MyHeads(ExitHead):
        name = "mine"
        ...

    register_head_type(MyHeads)   # then: probe_kit.train_exits(cache, "4,8", out, head="mine")

docs/exit-heads.md has a complete, tested example.
"""

from __future__ import annotations

from probe_kit.heads.dense import DenseExitHeads
from probe_kit.heads.det import DetExitHeads
from probe_kit.heads.interface import ExitHead

HEAD_TYPES: dict[str, type[ExitHead]] = {}


def register_head_type(cls: type[ExitHead], replace: bool = False) -> type[ExitHead]:
    """Add an ``ExitHead`` subclass under its ``name``; a name already taken is refused unless ``replace``."""
    if not (isinstance(cls, type) and issubclass(cls, ExitHead)):
        raise TypeError(f"register_head_type: expected an ExitHead subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{cls.__name__}.name: expected an identifier-like string, got {name!r}")
    if name in HEAD_TYPES and HEAD_TYPES[name] is not cls and not replace:
        raise ValueError(f"exit head type {name!r} is already registered ({HEAD_TYPES[name].__name__})")
    HEAD_TYPES[name] = cls
    return cls


def head_type(name: str, where: str = "--head") -> type[ExitHead]:
    """The registered type ``name``, or a one-line refusal naming ``where`` and the choices."""
    if name not in HEAD_TYPES:
        raise ValueError(f"{where}: expected one of {', '.join(sorted(HEAD_TYPES))}, got {name!r}")
    return HEAD_TYPES[name]


for _builtin in (DetExitHeads, DenseExitHeads):
    register_head_type(_builtin)
