"""The documentation's configuration and command-line references, generated from the pydantic models and the
typer app (the site's build hook calls these), so that they cannot fall behind the code."""

from __future__ import annotations

import html
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from semcon.config import MEMBER, RunConfig, reader


def config_sections() -> list[tuple[str, type[BaseModel], str]]:
    """Each config model once, as (section path, model, what its parent field says of it), top level first; a
    list of sections is ``clients[]``, and a model used in several places is shown at its first."""
    out, queue, named = [], [("", RunConfig, "")], {RunConfig: ""}
    while queue:
        path, model, about = queue.pop(0)
        out.append((path, model, about))
        for name, info in model.model_fields.items():
            full, nested = f"{path}.{name}" if path else name, _models_in(info.annotation)
            for sub in nested:
                if sub not in named:
                    named[sub] = _child(full, info, sub, len(nested))
                    queue.append((named[sub], sub, info.description or ""))
    return out


def config_reference() -> str:
    """Markdown: one table per section (field, type, default, what it does), top level first."""
    lines = ["# Configuration reference", "",
             "Generated from semcon's config models (`src/semcon/config.py`) when the site is built. A run is "
             "fully described by its resolved `config.yaml`; unknown keys are errors, and every value is checked "
             "when the config is loaded. Override any field with `--set KEY=VALUE` (e.g. "
             "`--set consensus.rule=gated`, `--set clients.0.lora.r=8`). A setting marked *server* is read by the "
             "coordinator alone, on the answers it receives; *member uploads* and *member labels* act only on what "
             "a member uploads or on the labels it trains on; every other setting is read by the members from round 0 "
             "on. Runs that differ only in the later ones share their start (`semcon ablate` forks such cells). A "
             "consensus setting the chosen rule does not read (`gate` under `medoid`) is refused.", ""]
    sections = config_sections()
    where = {model: path for path, model, _ in sections}
    for path, model, about in sections:
        lines += [f"## {f'`{path}`' if path else 'top level'}", "",
                  _clean(model.__doc__ or (about[:1].upper() + about[1:] + ".")), "",
                  "| field | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            link = "".join(f" (section [`{where[m]}`](#{_anchor(where[m])}))" for m in _models_in(info.annotation))
            lines.append(f"| `{name}` | {_cell(_type(info.annotation))} | {_cell(_default(info))} | "
                         f"{_cell((info.description or '') + _constraints(info) + _reader(model, name))}{link} |")
        lines.append("")
    return "\n".join(lines)


def cli_reference() -> str:
    """Markdown: every command of ``semcon`` with its usage, help and options."""
    import click
    import typer

    from semcon.cli import app

    root = typer.main.get_command(app)
    lines = ["# Command-line reference", "", "Generated from semcon's command line (`src/semcon/cli.py`) when the "
             "site is built; `semcon COMMAND --help` prints the same.", ""]
    ctx = click.Context(root, info_name="semcon")
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        groups = [(name, command)]
        if isinstance(command, click.Group):
            groups = [(f"{name} {sub}", command.get_command(ctx, sub)) for sub in command.list_commands(ctx)]
        for full, cmd in groups:
            usage = " ".join(["semcon", full, *(p.human_readable_name for p in cmd.params
                                                 if isinstance(p, click.Argument))])
            lines += [f"## `semcon {full}`", "", _clean(cmd.help or ""), "", "```", f"{usage} [OPTIONS]", "```", ""]
            helps = _argument_helps(cmd.callback)
            rows = [_param_row(p, helps) for p in cmd.params if p.name != "help"]
            if rows:
                lines += ["| argument or option | type | default | help |", "|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


def _argument_helps(callback) -> dict[str, str]:
    """The help texts of a command's arguments, read from its signature (the click objects of this typer version
    do not carry them)."""
    import typer

    found = {}
    for name, hint in typing.get_type_hints(callback, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, typer.models.ArgumentInfo) and meta.help:
                found[name] = meta.help
    return found


def _param_row(p, helps: dict[str, str]) -> str:
    import click

    if isinstance(p, click.Argument):
        name, help_text = p.human_readable_name, helps.get(p.name, "")
    else:
        name, help_text = ", ".join(p.opts + p.secondary_opts), p.help or ""
    default = "required" if p.required else ("–" if p.default in (None, (), []) else repr(p.default))
    kind = "flag" if getattr(p, "is_flag", False) else p.type.name
    return f"| `{name}` | {kind}{' (repeatable)' if p.multiple else ''} | {_cell(default)} | {_cell(help_text)} |"


def _child(full: str, info, sub: type[BaseModel], choices: int) -> str:
    """The section name of a nested model: ``clients[]`` for a list of them, the class name added where a field
    takes one of several (``clients`` as a list or one template)."""
    if _is_list(info.annotation) and choices == 1:
        return f"{full}[]"
    if choices > 1:
        return f"{full}[]" if sub is _models_in(info.annotation)[0] else f"{full} ({sub.__name__})"
    return full


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return list(dict.fromkeys(m for arg in typing.get_args(annotation) for m in _models_in(arg)))


def _is_list(annotation) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(_is_list(a) for a in typing.get_args(annotation) if not isinstance(a, str))


def _type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " | ".join(f'`{a}`' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args if a is not type(None)) + (
            " or none" if type(None) in args else "")
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping {_type(args[0])} → {_type(args[1])}"
    if isinstance(annotation, type):
        return {"str": "text", "int": "integer", "float": "number", "bool": "true/false", "PosixPath": "path",
                "Path": "path"}.get(annotation.__name__, "section" if issubclass(annotation, BaseModel)
                                     else annotation.__name__)
    return str(annotation)


def _default(info) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value: Any = info.default_factory() if info.default_factory is not None else info.default
    if isinstance(value, BaseModel):
        return "its defaults"
    if value is None:
        return "none"
    return f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'


def _reader(model: type[BaseModel], name: str) -> str:
    who = reader(model, name)
    return f" *Read by: {who}.*" if who != MEMBER else ""


def _constraints(info) -> str:
    bounds = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    found = [f"{sign} {getattr(m, key)}" for m in info.metadata for key, sign in bounds.items()
             if getattr(m, key, None) is not None]
    return f" ({', '.join(found)})" if found else ""


def _clean(text: str) -> str:
    """Help text as one line of markdown: ``<`` and ``&`` escaped outside code spans (``<method>`` is text, not
    an HTML tag the browser hides)."""
    return _escaped(" ".join(text.split()))


def _escaped(text: str) -> str:
    parts = text.split("`")
    return "`".join(html.escape(part, quote=False) if k % 2 == 0 else part for k, part in enumerate(parts))


def _cell(text: str) -> str:
    return _escaped(text).replace("|", "\\|").replace("\n", " ")


def _anchor(path: str) -> str:
    """The id MkDocs gives the heading ``path`` (its toc slugify: lower case, word characters and dashes)."""
    return re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", path.lower())).strip("-")
