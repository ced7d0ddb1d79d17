"""params_schema: checking a schema at registration and a run's params against it (jsonschema).

A schema is client input that the server evaluates, so evaluating it must be bounded:

- No network: `$ref` resolves only inside the schema itself. A reference to anything else (a URL, a
  file) is refused when the schema is stored, and validation uses a registry that cannot fetch.
- Regular expressions (`pattern`, `patternProperties`, and `additionalProperties` beside them) run on
  RE2, a linear-time engine; a pattern RE2 cannot run (lookaround, backreference) is refused when the
  schema is stored. Python's backtracking `re` never sees a client's pattern.
- Every validation has a deadline (`check_params(..., deadline_s=...)`): each keyword checks the clock,
  and `uniqueItems` is linear, so no schema and params can keep a worker busy past the run's timeout.
- Self-referencing schemas that never consume the instance (`{"$ref": "#"}`), unknown `$schema`
  dialects and other oddities are a `SchemaProblem`, never an exception escaping to the caller.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from selfmcp.errors import InvalidParams, InvalidParamsSchema

# Keywords whose values are data, not subschemas: a "$ref" or "pattern" inside them means nothing.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "description", "title", "$comment"})
# Keywords whose value maps names (not keywords) to subschemas.
_NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("schema_deadline", default=math.inf)


@dataclass(frozen=True)
class SchemaProblem(Exception):
    """Where (a JSON path such as `$.city`) and what is wrong with a schema or with params."""

    path: str
    message: str
    validator: str = ""


class ValidationTimedOut(Exception):
    """Checking params against a schema took longer than its deadline."""


def json_path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# ------------------------------------------------------------------------- regular expressions

@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> Any:
    import re2

    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def _search(pattern: str, text: str) -> bool:
    return _regex(pattern).search(text) is not None


def _regex_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return f"{pattern!r} is not a string"
    try:
        _regex(pattern)
    except Exception as exc:  # re2.error, or a pattern too large for RE2's memory budget
        return (f"the regular expression {pattern[:200]!r} cannot be run in linear time "
                f"({str(exc)[:120] or type(exc).__name__}): lookarounds and backreferences are not supported")
    return None


# ------------------------------------------------------------------------------- walking schemas

def _walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Every subschema (a dict in a schema position) with its path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in _DATA_KEYWORDS:
                continue
            if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
                for name, sub in value.items():
                    yield from _walk(sub, (*path, key, name))
            elif isinstance(value, dict):
                yield from _walk(value, (*path, key))
            elif isinstance(value, list):
                for i, sub in enumerate(value):
                    yield from _walk(sub, (*path, key, i))


def _dialect(schema: dict[str, Any]) -> Any:
    """The validator class of the schema's `$schema` (the newest draft when absent)."""
    from jsonschema.validators import _META_SCHEMAS, validator_for

    dialect = schema.get("$schema")
    if dialect is None:
        return validator_for(schema)
    if not isinstance(dialect, str) or dialect.rstrip("#") not in {u.rstrip("#") for u in _META_SCHEMAS}:
        raise SchemaProblem("$.$schema", f"{dialect!r} is not a JSON Schema dialect this server knows; "
                                         "leave $schema out (draft 2020-12) or name a published draft")
    return validator_for(schema)


class _NoNetwork(Exception):
    pass


def _refuse(uri: str) -> Any:
    raise _NoNetwork(uri)


def _registry() -> Any:
    import referencing

    return referencing.Registry(retrieve=_refuse)


def _check_references(schema: dict[str, Any], cls: Any) -> None:
    """Every `$ref`/`$dynamicRef` resolves inside the schema; nothing would be fetched."""
    from referencing.exceptions import Unresolvable, Unretrievable

    resolver = cls(schema, registry=_registry())._resolver  # rooted at the schema, as validation sees it
    for path, sub in _walk(schema):
        for key in ("$ref", "$dynamicRef"):
            ref = sub.get(key)
            if not isinstance(ref, str):
                continue
            where = json_path((*path, key))
            try:
                urllib.parse.urlsplit(ref)
                resolver.lookup(_absolute(schema, path, ref))
            except ValueError:
                raise SchemaProblem(where, f"{ref!r} is not a valid URI reference") from None
            except Unresolvable as exc:
                if isinstance(exc, Unretrievable) or isinstance(exc.__cause__, Unretrievable):
                    raise SchemaProblem(where, f"{ref!r} points outside this schema; only local references "
                                               "(e.g. '#/$defs/name') are allowed, the server fetches nothing",
                                        "remote_ref") from None
                raise SchemaProblem(where, f"{ref!r} does not resolve to any part of this schema") from None


def _absolute(schema: dict[str, Any], path: tuple[Any, ...], ref: str) -> str:
    """`ref` joined to the base URI in scope at `path` (the `$id`s of the enclosing subschemas)."""
    base = ""
    node: Any = schema
    for step in (None, *path):
        if step is not None:
            node = node[step]
        if isinstance(node, dict) and isinstance(node.get("$id"), str):
            base = urllib.parse.urljoin(base, node["$id"])
    return urllib.parse.urljoin(base, ref) if base else ref


# ----------------------------------------------------------------------------- bounded validator

def _timed(keyword: Any) -> Any:
    def check(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if time.monotonic() > _deadline.get():
            raise ValidationTimedOut()
        return keyword(validator, value, instance, schema) or ()
    return check


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extras = [k for k in instance if k not in properties and not any(_search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        names = ", ".join(repr(k) for k in sorted(extras)[:20])
        yield ValidationError(f"Additional properties are not allowed ({names} unexpected)")


def _canonical(value: Any) -> Any:
    """A hashable form in which JSON-equal values (1 and 1.0, key order) are equal and True is not 1."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("other", json.dumps(value, default=repr))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"{json.dumps(item)[:200]} appears more than once (uniqueItems)")
            return
        seen.add(key)


@functools.lru_cache(maxsize=16)
def _bounded(cls: Any) -> Any:
    """`cls` with RE2 patterns, linear uniqueItems and a deadline check in every keyword."""
    from jsonschema.validators import extend

    replaced = {"pattern": _pattern, "patternProperties": _pattern_properties,
                "additionalProperties": _additional_properties, "uniqueItems": _unique_items}
    keywords = {name: _timed(replaced.get(name, fn)) for name, fn in cls.VALIDATORS.items()}
    return extend(cls, keywords)


# ----------------------------------------------------------------------------------- public API

def check_schema(schema: dict[str, Any]) -> None:
    """Raise SchemaProblem when `schema` is not a valid JSON Schema this server can evaluate safely."""
    from jsonschema.exceptions import SchemaError

    try:
        cls = _dialect(schema)
        cls.check_schema(schema)
    except SchemaError as exc:
        raise SchemaProblem(json_path(exc.path), exc.message) from None
    except RecursionError:
        raise SchemaProblem("$", "the schema is nested too deeply") from None
    uses_unevaluated = False
    uses_patterns = False
    for path, sub in _walk(schema):
        if isinstance(sub.get("pattern"), str):
            problem = _regex_problem(sub["pattern"])
            if problem:
                raise SchemaProblem(json_path((*path, "pattern")), problem, "pattern")
        if isinstance(sub.get("patternProperties"), dict):
            uses_patterns = True
            for pattern in sub["patternProperties"]:
                problem = _regex_problem(pattern)
                if problem:
                    raise SchemaProblem(json_path((*path, "patternProperties")), problem, "patternProperties")
        uses_unevaluated = uses_unevaluated or "unevaluatedProperties" in sub
    if uses_unevaluated and uses_patterns:
        # jsonschema evaluates unevaluatedProperties with Python's backtracking re on these patterns.
        raise SchemaProblem("$", "unevaluatedProperties together with patternProperties is not supported; "
                                 "use additionalProperties instead", "unevaluatedProperties")
    _check_references(schema, cls)
    try:  # a schema that refers to itself without consuming anything fails on any instance
        _first_error(schema, {}, deadline_s=2.0)
    except ValidationTimedOut:
        raise SchemaProblem("$", "the schema takes too long to evaluate on an empty object") from None


def check_params(schema: dict[str, Any], params: dict[str, Any], *, deadline_s: float = math.inf) -> None:
    """Raise SchemaProblem naming the offending field when `params` do not fit `schema`.

    Raises ValidationTimedOut when the check runs past `deadline_s` seconds.
    """
    error = _first_error(schema, params, deadline_s=deadline_s)
    if error is None:
        return
    parts = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        absent = [k for k in error.validator_value if k not in error.instance]
        parts += absent[:1]
    raise SchemaProblem(json_path(parts), error.message[:500], str(error.validator))


def _first_error(schema: dict[str, Any], instance: Any, *, deadline_s: float) -> Any:
    """The most relevant validation error of `instance` (None if it fits), evaluated within the deadline."""
    from jsonschema.exceptions import best_match
    from referencing.exceptions import Unresolvable

    token = _deadline.set(time.monotonic() + deadline_s)
    try:
        cls = _bounded(_dialect(schema))
        return best_match(cls(schema, registry=_registry()).iter_errors(instance))
    except RecursionError:
        raise SchemaProblem("$", "the params_schema refers to itself without end (or the params are nested too "
                                 "deeply)", "$ref") from None
    except Unresolvable as exc:
        raise SchemaProblem("$", f"the params_schema has a reference that cannot be resolved here: {exc}",
                            "$ref") from None
    finally:
        _deadline.reset(token)


# ------------------------------------------------------------------- as the registry's errors

def validated_schema(schema: Any) -> dict[str, Any] | None:
    """`schema` to store (None for none), or InvalidParamsSchema saying where and what is wrong."""
    if schema is None or schema == {}:
        return None
    if not isinstance(schema, dict):
        raise InvalidParamsSchema(f"params_schema must be a JSON Schema object, not {type(schema).__name__}.")
    try:
        json.dumps(schema)
        check_schema(schema)
    except SchemaProblem as exc:
        details = {"reason": exc.validator} if exc.validator else {}
        raise InvalidParamsSchema(f"params_schema is not a valid JSON Schema at {exc.path}: {exc.message}",
                                  path=exc.path, **details) from None
    except (RecursionError, ValueError):
        raise InvalidParamsSchema("params_schema is nested too deeply (or holds a number too large to store).",
                                  path="$") from None
    return schema


def check_run_params(schema: dict[str, Any], params: Any, row: Any, *, timeout_s: float, started: float) -> None:
    """Check a run's params against its skill's (`row`) schema in what is left of the run's timeout (it began at
    `started`, time.monotonic()); InvalidParams, or InvalidParamsSchema for a stored schema that cannot be evaluated."""
    skill_id, name = row["id"], row["name"]
    try:
        check_params(schema, params, deadline_s=timeout_s - (time.monotonic() - started))
    except ValidationTimedOut:
        raise InvalidParams(f"Checking params against the params_schema of {name!r} took longer than the run's "
                            f"timeout ({timeout_s:g} s); the skill did not run.",
                            hint="Send smaller params, raise timeout, or simplify params_schema with skill_update.",
                            timed_out=True) from None
    except SchemaProblem as exc:
        if exc.validator in ("$ref", "remote_ref"):  # the stored schema itself cannot be evaluated
            raise InvalidParamsSchema(f"The params_schema of {name!r} cannot be evaluated: {exc.message}",
                                      path=exc.path, hint=f"Fix it with skill_update(skill_id={skill_id}, "
                                                          "params_schema=...), or pass {} to remove it.") from None
        raise InvalidParams(f"params do not match the skill's params_schema at {exc.path}: {exc.message}",
                            hint=f"Read params_schema with skill_get_detail(skill_id={skill_id}) and fix {exc.path}.",
                            path=exc.path, validator=exc.validator) from None
