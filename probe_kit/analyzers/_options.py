"""Analyzer options checked against their declarations before any work (``-o`` text, YAML, Python).

An analyzer declares its options either as an options dataclass (``register(..., options=Cls)``) or
as keyword parameters of its ``run`` function; ranges ride along as ``Annotated[..., Range(...)]``
(see ``probe_kit.options``). Parameters without a type hint (third-party plugins) pass unchecked.
"""

from __future__ import annotations

from typing import Any

from probe_kit.analyzers._registry import AnalyzerInfo
from probe_kit.options import check_fields

_NOT_OPTIONS = ("cache", "layers", "seed", "return")


def check_options(info: AnalyzerInfo, options: dict[str, Any], *, where: str = "", text: bool = False) -> dict:
    """``options`` typed and range-checked for analyzer ``info``; ``UserError`` names the first bad key.

    ``where`` prefixes the key in messages (``"-o "``, ``"exp.yaml: analyzers.lens."``); ``text``:
    the values are strings from the command line, parsed by each option's declared type.
    """
    owner = info.options if info.options is not None else info.run
    return check_fields(owner, options, prefix=where, text=text, skip=_NOT_OPTIONS)
