"""One readable line for each mistake the config parser catches, instead of jsonargparse's usage dump.

The CLI parses with ``exit_on_error=False``; :func:`explain_parse_error` turns the parser's
message into a :class:`~lightning_dsrl.errors.ConfigError` text that names the option and a fix:

    unknown option        model.name_or_pth: no such option (did you mean model.name_or_path?) ...
    wrong type            rollout.num_generations: expected int, got 'eight'
    unknown class         model.objective: unknown class 'DSGRP'. Built-in Objective classes: DSGRPO, GRPO ...
    unknown init arg      model.objective.init_args.gama_p: DSGRPO has no option 'gama_p' (did you mean gamma_p?) ...
    missing / bad file    --config x.yaml: no such file ... / not valid YAML ...

:func:`check_config_files` runs before parsing, so a missing or malformed config file is named
with its line and column. A message that matches none of the patterns is passed on, flattened
to one line.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import typing
from typing import Any

import yaml

from lightning_dsrl.errors import ConfigError

__all__ = ["check_config_files", "explain_parse_error", "builtin_subclasses"]

_HELP = "`python -m lightning_dsrl {cmd} --help` lists every option"


# ---------------------------------------------------------------------------- config files
def check_config_files(argv: list[str]) -> None:
    """Raise ``ConfigError`` for a ``--config`` file that does not exist or is not valid YAML."""
    for value in _config_values(argv):
        if "\n" in value or value.lstrip().startswith("{"):
            continue  # an inline YAML string, which jsonargparse also accepts
        if not os.path.isfile(value):
            raise ConfigError(f"--config {value}: no such file (relative paths start in {os.getcwd()}); "
                              "the shipped configs are in configs/, e.g. --config configs/ds_grpo.yaml")
        try:
            with open(value, encoding="utf-8") as handle:
                yaml.safe_load(handle)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"--config {value}: not valid YAML: {problem}{where}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--config {value}: cannot be read ({err})") from None


def _config_values(argv: list[str]) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith("--config="):
            values.append(arg[len("--config="):])
    return values


# ---------------------------------------------------------------------------- parse errors
def explain_parse_error(message: str, parser: Any = None, subcommand: str | None = None) -> str:
    """A one-line explanation of a jsonargparse error ``message`` (see the module docstring).

    ``parser`` (the parser of ``subcommand``) supplies the known options for "did you mean".

    >>> explain_parse_error('Parser key "trainer.max_steps":\\n  Expected a <class \\'int\\'>. Got value: abc')
    "trainer.max_steps: expected int, got 'abc'"
    """
    cmd = subcommand or "fit"
    keys = _known_keys(parser)
    text = message.strip()

    found = re.match(r"unrecognized arguments: (.*)", text, re.S)
    if found:
        options = [t.split("=")[0] for t in found.group(1).split() if t.startswith("--")] or [found.group(1)]
        hints = [_did_you_mean(o[2:], keys, prefix="--") for o in options]
        return (f"unknown option {', '.join(options)}{''.join(h for h in hints if h)}. "
                f"{_HELP.format(cmd=cmd)}")

    found = re.match(r"(Subcommand|Group) '([^']+)' does not accept option '([^']+)'", text)
    top = re.match(r"Option '([^']+)' is not accepted", text)
    if found or top:
        kind, group, option = found.groups() if found else ("Subcommand", "", top.group(1))
        key = option if kind == "Subcommand" else f"{group}.{option}"
        return f"{key}: no such option{_did_you_mean(key, keys)}. {_HELP.format(cmd=cmd)}"

    found = re.match(r'Parser key "([^"]+)":\s*(.*)', text, re.S)
    if found:
        key, body = found.groups()
        return f"{key}{_explain_value_error(key, body, parser)}"

    found = re.match(r"Problems parsing config: (.*)", text, re.S)
    if found:
        return f"a config is not valid YAML: {_one_line(found.group(1))}"
    return _one_line(text)


def _explain_value_error(key: str, body: str, parser: Any) -> str:
    """``: <what is wrong and how to fix it>`` for the body of a ``Parser key "key":`` message."""
    unknown_class = re.search(r"Expected a dot import path string: (\S+)", body)
    problem = re.search(r"Problem with given class_path '([^']+)':\s*(.*?)(?:\n\s*- |\Z)", body, re.S)
    if problem:
        class_path, inner = problem.groups()
        cls = _import(class_path)
        name = cls.__name__ if cls is not None else class_path
        option = re.search(r"Option '([^']+)' is not accepted", inner) or \
            re.search(r"Group '[^']+' does not accept option '([^']+)'", inner)
        if option:
            accepted = _init_args(cls) if cls is not None else []
            hint = _did_you_mean(option.group(1), accepted)
            listing = f" Its options: {', '.join(accepted)}" if accepted else ""
            return f".init_args.{option.group(1)}: {name} has no option {option.group(1)!r}{hint}.{listing}"
        nested = re.search(r'Parser key "([^"]+)":\s*(.*)', inner, re.S)
        if nested:
            return f".init_args.{nested.group(1)}{_explain_type(nested.group(2))}"
        if "No module named" in inner or "has no attribute" in inner or "import" in inner.lower():
            return _cannot_import(class_path, _one_line(inner))
        return f": {name}: {_one_line(inner)}"
    if unknown_class:
        name = unknown_class.group(1)
        bases = _class_bases(key, body, parser)
        if "." in name:
            return _cannot_import(name, "no such module or class")
        listing = "; ".join(f"Built-in {b.__name__} classes: {', '.join(builtin_subclasses(b)) or 'none'}"
                            for b in bases)
        return f": unknown class {name!r}. {listing or 'no such class'}. {_own_class_hint()}"
    return _explain_type(body)


def _explain_type(body: str) -> str:
    """``: expected <type>, got <value>`` from jsonargparse's type error text."""
    got = re.search(r"Got value: (.*)", body) or re.search(r"Given value: (.*)", body)
    subtypes = re.search(r"Subtypes: \[(.*)\]", body)
    expected = re.search(r"Expected an? (.+?)(?:\. Got value:|\n|$)", body)
    if subtypes:
        types = " or ".join(_type_name(t) for t in _split_types(subtypes.group(1)))
    elif expected:
        types = _type_name(expected.group(1))
    else:
        return f": {_one_line(body)}"
    value = got.group(1).strip() if got else "?"
    return f": expected {types}, got {value!r}"


def _split_types(text: str) -> list[str]:
    """Split ``A, B[C, D], E`` at top-level commas."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(text[start:i].strip())
            start = i + 1
    out.append(text[start:].strip())
    return [t for t in out if t]


def _type_name(text: str) -> str:
    """``<class 'float'>`` -> ``float``, ``typing.Literal['a', 'b']`` -> ``one of 'a', 'b'``, ``NoneType`` -> ``null``."""
    text = text.strip()
    literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if literal:
        return f"one of {literal.group(1)}"
    text = re.sub(r"<class '([^']+)'>", r"\1", text)
    text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)  # drop module paths
    return "null" if text == "NoneType" else text


# ---------------------------------------------------------------------------- classes
def builtin_subclasses(base: type) -> list[str]:
    """Names of the concrete subclasses of ``base`` that ship with the package defining them
    (``lightning_dsrl`` for ours), sorted; classes marked ``internal = True`` are left out.

    >>> from lightning_dsrl.objectives import Objective
    >>> {"GRPO", "DSGRPO"} <= set(builtin_subclasses(Objective))
    True
    """
    roots = {"lightning_dsrl", base.__module__.split(".")[0]}
    seen, stack, names = set(), list(base.__subclasses__()), set()
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] not in roots or cls.__name__.startswith(("_", "LazyInstance_")):
            continue
        if cls.__dict__.get("internal", False) or inspect.isabstract(cls):
            continue
        names.add(cls.__name__)
    return sorted(names)


def _class_bases(key: str, body: str, parser: Any) -> list[type]:
    """The base classes the option ``key`` accepts: from the parser's type hint, else from the message."""
    hint = None
    for action in getattr(parser, "_actions", []):
        if getattr(action, "dest", None) == key:
            hint = getattr(action, "_typehint", None)
    bases = _classes_in(hint) if hint is not None else []
    if not bases:
        for path in re.findall(r"<class '([\w.]+)'>|\[([\w.]+)\]", body):
            cls = _import(path[0] or path[1])
            if cls is not None and cls.__module__ != "builtins":
                bases.append(cls)
    return list(dict.fromkeys(bases))


def _classes_in(hint: Any) -> list[type]:
    if inspect.isclass(hint):
        return [] if hint.__module__ == "builtins" else [hint]
    return [c for arg in typing.get_args(hint) for c in _classes_in(arg)]


def _import(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    if not module:
        return None
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # noqa: BLE001 - only used to improve a message
        return None


def _init_args(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the class tree."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _cannot_import(path: str, why: str) -> str:
    module = path.rsplit(".", 1)[0]
    return (f": cannot import {path!r} ({why}); put {module.replace('.', '/')}.py in the working directory or on "
            "PYTHONPATH, and check the spelling of the module and the class")


def _own_class_hint() -> str:
    return ("For your own class give its import path, e.g. class_path: my_module.MyClass with my_module.py in "
            "the working directory")


# ---------------------------------------------------------------------------- helpers
def _known_keys(parser: Any) -> list[str]:
    return [a.dest for a in getattr(parser, "_actions", []) if isinstance(getattr(a, "dest", None), str)]


def _did_you_mean(key: str, candidates: list[str], prefix: str = "") -> str:
    if not candidates:
        return ""
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close and "." in key:  # a misspelt section: compare the first part
        sections = sorted({c.split(".")[0] for c in candidates})
        first = difflib.get_close_matches(key.split(".")[0], sections, n=1, cutoff=0.6)
        close = [f"{first[0]}.{key.split('.', 1)[1]}"] if first else []
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
