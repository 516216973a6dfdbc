"""The config sections and their keys, as text for `metaserve train --help` (read from the pydantic models).

Introspected rather than written out, so a key added to config.py shows up here without an edit.
"""

from __future__ import annotations

import textwrap
import typing

from pydantic import BaseModel


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (unions and Annotated[...] unpacked), in order."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _literal_names(model: type[BaseModel]) -> list[str]:
    field = model.model_fields.get("name")
    return [str(a) for a in typing.get_args(field.annotation)] if field is not None else []


def sections_help(width: int = 100) -> str:
    """One paragraph per section of Config: its names (for tagged sections) and every key."""
    from metaserve import registry
    from metaserve.config import Config

    algorithms = list(dict.fromkeys(registry.entry(n).config for n in registry.names()))  # the registry's sections
    out = ["config sections (override any key with --set SECTION.KEY=VALUE):"]
    for section, field in Config.model_fields.items():
        models = algorithms if section == "algorithm" else _models(field.annotation)
        if not models:
            out.append(f"  {section}: {getattr(field.annotation, '__name__', field.annotation)}")
            continue
        names = list(dict.fromkeys(n for m in models for n in _literal_names(m)))
        keys = list(dict.fromkeys(k for m in models for k in m.model_fields if k != "name"))
        text = (f"name: {' | '.join(names)}; " if names else "") + ", ".join(keys)
        out.append(
            textwrap.fill(
                text, width=width, initial_indent=f"  {section}: ", subsequent_indent=" " * 6, break_on_hyphens=False
            )
        )
    return "\n".join(out)
