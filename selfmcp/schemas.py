"""params_schema: checking a schema at registration and a run's params against it (jsonschema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SchemaProblem(Exception):
    """Where (a JSON path such as `$.city`) and what is wrong with a schema or with params."""

    path: str
    message: str
    validator: str = ""


def json_path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def check_schema(schema: dict[str, Any]) -> None:
    """Raise SchemaProblem when `schema` is not a valid JSON Schema."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise SchemaProblem(json_path(exc.path), exc.message) from None


def check_params(schema: dict[str, Any], params: dict[str, Any]) -> None:
    """Raise SchemaProblem naming the offending field when `params` do not fit `schema`."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    error = best_match(validator_for(schema)(schema).iter_errors(params))
    if error is None:
        return
    parts = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        absent = [k for k in error.validator_value if k not in error.instance]
        parts += absent[:1]
    raise SchemaProblem(json_path(parts), error.message, str(error.validator))
