"""Typed answers: the JSON Schema of an answer type, checking an answer against it, and
building the typed value a node gets back.

A question asked with ``interrupt(..., answer=T)`` stores ``T``'s JSON Schema with the
question, so any client (a form, another service) can tell what to send, and ``resume``
checks an answer against that stored schema before it claims the run: the type itself
may live only in the node's code, which ``resume`` does not run. The answer is stored as
plain JSON; the node's ``interrupt`` call builds its ``T`` from it.

The schemas come from pydantic for pydantic models (``model_json_schema()``) and from a
small generator here for dataclasses, Enums, ``str``/``int``/``float``/``bool``/``None``,
``Optional``/unions, ``list[...]`` and ``Literal[...]``. The checker covers what those
schemas use (types, enum/const, properties/required/additionalProperties, items,
anyOf/oneOf/allOf, local ``$ref``, and the common bounds), with no extra dependency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from workflow_persistence.errors import InvalidAnswerError, WorkflowDefinitionError

__all__ = ["build_answer", "check_answer", "plain_answer", "schema_of"]

_PLAIN: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}
_UNIONS = (typing.Union, types.UnionType)
_cache: dict[Any, dict[str, Any]] = {}


# -- the schema of a type ---------------------------------------------------------------------


def schema_of(tp: Any) -> dict[str, Any]:
    """The JSON Schema of answers of type ``tp``; WorkflowDefinitionError if unsupported.

    Do not change the returned dict: it is cached per type.
    """
    try:
        return _cache[tp]
    except (KeyError, TypeError):  # TypeError: an unhashable annotation
        pass
    if _is_model(tp):
        schema: dict[str, Any] = tp.model_json_schema()
    else:
        defs: dict[str, Any] = {}
        schema = _Generator(tp, defs).schema(tp)
        if defs:
            schema = {**schema, "$defs": defs}
    with contextlib.suppress(TypeError):  # an unhashable annotation: not cached
        _cache[tp] = schema
    return schema


class _Generator:
    """Builds one schema: nested dataclasses and models go to ``$defs`` by name."""

    def __init__(self, root: Any, defs: dict[str, Any]) -> None:
        self.root = root
        self.defs = defs
        self.names: dict[type, str] = {}

    def schema(self, tp: Any) -> dict[str, Any]:
        if tp in _PLAIN:
            return dict(_PLAIN[tp])
        origin = get_origin(tp)
        if origin in _UNIONS:
            return {"anyOf": [self.schema(arg) for arg in get_args(tp)]}
        if origin is Literal:
            values = list(get_args(tp))
            for value in values:
                if not (value is None or type(value) in (str, int, bool)):
                    raise _unsupported(tp, "Literal values must be str, int, bool or None")
            return {"enum": values}
        if origin is list:
            (item,) = get_args(tp) or (Any,)
            return {"type": "array", "items": self.schema(item)}
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _enum_schema(tp)
        if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_model(tp)):
            if tp is self.root:
                return self._dataclass(tp) if not self.names.get(tp) else {"$ref": "#"}
            return {"$ref": f"#/$defs/{self._define(tp)}"}
        raise _unsupported(tp, "")

    def _define(self, cls: type) -> str:
        name = self.names.get(cls)
        if name is not None:
            return name
        name = cls.__name__
        while name in self.defs:
            name += "_"
        self.names[cls] = name
        self.defs[name] = {}  # taken, for a class that refers to itself
        if _is_model(cls):
            found = cls.model_json_schema(ref_template="#/$defs/{model}")  # type: ignore[attr-defined]
            nested = found.pop("$defs", {})
            for key, value in nested.items():
                self.defs.setdefault(key, value)
            self.defs[name] = found
        else:
            self.defs[name] = self._dataclass(cls)
        return name

    def _dataclass(self, cls: type) -> dict[str, Any]:
        self.names.setdefault(cls, cls.__name__)
        hints = _hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            prop = self.schema(hints.get(f.name, Any))
            if f.default is not dataclasses.MISSING:
                if f.default is None or type(f.default) in (str, int, float, bool):
                    prop = {**prop, "default": f.default}
            elif f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            properties[f.name] = prop
        schema: dict[str, Any] = {
            "title": cls.__name__,
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        return schema


def _enum_schema(cls: type[enum.Enum]) -> dict[str, Any]:
    values = [member.value for member in cls]
    kinds = {type(value) for value in values}
    if not kinds <= {str, int}:
        raise _unsupported(cls, "an Enum's values must be str or int")
    schema: dict[str, Any] = {"title": cls.__name__, "enum": values}
    if len(kinds) == 1:
        schema["type"] = "string" if kinds == {str} else "integer"
    return schema


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:
        raise WorkflowDefinitionError(
            f"the annotations of {cls.__qualname__} cannot be resolved ({exc}); define the"
            " classes it names at module level"
        ) from exc


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_json_schema") and hasattr(
        tp, "__pydantic_fields__"
    )


def _unsupported(tp: Any, why: str) -> WorkflowDefinitionError:
    return WorkflowDefinitionError(
        f"interrupt(answer={tp!r}) is not an answer type this library can describe"
        f"{': ' + why if why else ''}; use a dataclass, a pydantic model, an Enum, str, int,"
        " float, bool, or Optional/list/Literal of those"
    )


# -- answers as plain JSON ----------------------------------------------------------------


def plain_answer(value: Any) -> Any:
    """``value`` as the plain JSON a schema describes: instances of dataclasses and models
    become objects of their fields, Enums their values, tuples lists."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, enum.Enum):
        return plain_answer(value.value)
    if isinstance(value, Mapping):
        return {key: plain_answer(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_answer(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_answer(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if _is_model(type(value)):
        return value.model_dump(mode="json")
    return value


# -- checking an answer -----------------------------------------------------------------------


def check_answer(schema: Mapping[str, Any], value: Any, *, path: str = "answer") -> None:
    """Raise InvalidAnswerError naming the first part of ``value`` that ``schema`` refuses."""
    problem = _problem(schema, value, path, schema)
    if problem is not None:
        where, reason = problem
        raise InvalidAnswerError(f"{where}: {reason}", field=where)


Problem = tuple[str, str] | None

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
    "array": "a list",
    "object": "an object",
}


def _problem(schema: Any, value: Any, path: str, root: Mapping[str, Any]) -> Problem:
    if schema is True or not isinstance(schema, Mapping):
        return None if schema is not False else (path, "no value is allowed here")
    ref = schema.get("$ref")
    if ref is not None:
        target = _resolve(ref, root)
        if target is None:
            return path, f"the question's schema has a reference it cannot follow ({ref})"
        return _problem(target, value, path, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            found = [_problem(option, value, path, root) for option in schema[key]]
            if None not in found:
                return max(found, key=lambda p: len(p[0]) if p else 0)
    for option in schema.get("allOf", ()):
        problem = _problem(option, value, path, root)
        if problem is not None:
            return problem
    if "const" in schema and not _same(value, schema["const"]):
        return path, f"must be {_shown(schema['const'])}, not {_shown(value)}"
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        choices = ", ".join(_shown(option) for option in schema["enum"])
        return path, f"must be one of {choices}, not {_shown(value)}"
    wanted = schema.get("type")
    if wanted is not None:
        kinds = [wanted] if isinstance(wanted, str) else list(wanted)
        if not any(_is(kind, value) for kind in kinds):
            names = " or ".join(_TYPE_NAMES.get(kind, kind) for kind in kinds)
            return path, f"must be {names}, not {_shown(value)}"
    if type(value) in (int, float):
        return _number_problem(schema, value, path)
    if type(value) is str:
        return _text_problem(schema, value, path)
    if type(value) is list:
        return _list_problem(schema, value, path, root)
    if type(value) is dict:
        return _object_problem(schema, value, path, root)
    return None


def _is(kind: str, value: Any) -> bool:
    k = type(value)
    if kind == "integer":
        return k is int
    if kind == "number":
        return k is int or (k is float and math.isfinite(value))
    return {
        "string": k is str,
        "boolean": k is bool,
        "null": value is None,
        "array": k is list,
        "object": k is dict and all(type(key) is str for key in value),
    }.get(kind, False)


_BOUNDS = (
    ("minimum", "at least"),
    ("maximum", "at most"),
    ("exclusiveMinimum", "more than"),
    ("exclusiveMaximum", "less than"),
)


def _within(key: str, value: float, bound: float) -> bool:
    if key == "minimum":
        return value >= bound
    if key == "maximum":
        return value <= bound
    return value > bound if key == "exclusiveMinimum" else value < bound


def _number_problem(schema: Mapping[str, Any], value: float, path: str) -> Problem:
    for key, words in _BOUNDS:
        bound: Any = schema.get(key)
        if type(bound) in (int, float) and not _within(key, value, bound):
            return path, f"must be {words} {bound}, not {value}"
    return None


def _text_problem(schema: Mapping[str, Any], value: str, path: str) -> Problem:
    low, high = schema.get("minLength"), schema.get("maxLength")
    if type(low) is int and len(value) < low:
        return path, f"must be at least {low} characters long"
    if type(high) is int and len(value) > high:
        return path, f"must be at most {high} characters long"
    pattern = schema.get("pattern")
    if type(pattern) is str and re.search(pattern, value) is None:
        return path, f"must match the pattern {pattern!r}"
    return None


def _list_problem(schema: Mapping[str, Any], value: list[Any], path: str, root: Any) -> Problem:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if type(low) is int and len(value) < low:
        return path, f"must hold at least {low} items"
    if type(high) is int and len(value) > high:
        return path, f"must hold at most {high} items"
    prefix = schema.get("prefixItems", ())
    items = schema.get("items", True)
    for i, item in enumerate(value):
        problem = _problem(prefix[i] if i < len(prefix) else items, item, f"{path}[{i}]", root)
        if problem is not None:
            return problem
    return None


def _object_problem(
    schema: Mapping[str, Any], value: dict[str, Any], path: str, root: Any
) -> Problem:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            return f"{path}.{name}", "is required"
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        problem = _problem(properties.get(name, extra), item, f"{path}.{name}", root)
        if problem is not None:
            if name not in properties and extra is False:
                return f"{path}.{name}", "is not a field of this answer"
            return problem
    return None


def _resolve(ref: Any, root: Mapping[str, Any]) -> Any:
    if ref == "#":
        return root
    if type(ref) is not str or not ref.startswith("#/"):
        return None
    target: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(target, Mapping) or part not in target:
            return None
        target = target[part]
    return target


def _same(value: Any, option: Any) -> bool:
    """JSON equality: ``True`` is not ``1``, and ``1`` is ``1.0``."""
    if (type(value) is bool) != (type(option) is bool):
        return False
    return bool(value == option)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- building the typed answer ----------------------------------------------------------------


def build_answer(tp: Any, value: Any) -> Any:
    """The ``tp`` that the checked plain ``value`` describes."""
    if tp in _PLAIN:
        return float(value) if tp is float and type(value) is int else value
    origin = get_origin(tp)
    if origin in _UNIONS:
        for option in get_args(tp):
            if _problem(schema_of(option), value, "answer", schema_of(option)) is None:
                return build_answer(option, value)
        return value
    if origin is Literal:
        return value
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return [build_answer(item, v) for v in value]
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if _is_model(tp):
        return tp.model_validate(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        fields = {
            f.name: build_answer(hints.get(f.name, Any), value[f.name])
            for f in dataclasses.fields(tp)
            if f.init and f.name in value
        }
        return tp(**fields)
    return value
