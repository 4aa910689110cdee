"""R4 structure validation of outgoing resources.

fhir.resources >= 7 defaults to R5, so the R4B models are used: R4B changed no
structure of the resources the hub builds, which makes them the closest offline R4
check. Real R4 conformance is checked against HAPI's ``$validate`` in integration tests.

Errors name the resource type, the element path and the rule, never the value (PHI).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import ValidationError

from hub.errors import ValidationFailed


@cache
def _model_class(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError) as exc:
        raise ValidationFailed(f"unknown FHIR resource type {resource_type!r}") from exc


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise :class:`ValidationFailed` unless ``resource`` is structurally valid R4.

    Bundles are validated entry by entry so that the error names the failing entry.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise ValidationFailed("resource has no resourceType", path="resourceType")
    if resource_type == "Bundle":
        for index, entry in enumerate(resource.get("entry") or []):
            inner = entry.get("resource")
            if inner is not None:
                try:
                    validate_resource(inner)
                except ValidationFailed as exc:
                    raise ValidationFailed(
                        f"Bundle.entry[{index}]: {exc}", resource_type=exc.resource_type, path=exc.path
                    ) from None
        body = {k: v for k, v in resource.items() if k != "entry"}
        resource = body
    try:
        _model_class(resource_type).model_validate(resource)
    except ValidationError as exc:
        problems = exc.errors(include_input=False, include_url=False)
        first = problems[0]
        path = _path(tuple(first["loc"]))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValidationFailed(
            f"{resource_type}.{path}: {first['msg']}{more}", resource_type=resource_type, path=path
        ) from None
