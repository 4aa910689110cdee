"""The shape validator (hub.mapping.fastvalidate) gives validate_resource's verdict, word for word.

Resources are the ones our maps build (every message of the test corpus, translated with the
shipped maps). A validator that has seen them all - so its fast path is used - must accept and
reject exactly what ``validate_resource`` accepts and rejects, with the same error, for each
resource mutated in every way a map could get wrong: a primitive of every other JSON type, an
empty or space-padded string, malformed date / dateTime / instant / time / code / id / uri /
decimal values, a missing element (required ones included), an unknown element, a second choice
type, a single value where a list belongs and a list where a single value belongs, an empty list,
a null in a list.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from adapters.hl7v2 import Hl7v2Translator, split_batch
from hub.errors import ValidationFailed
from hub.fhir.validation import validate_resource
from hub.mapping.fastvalidate import ShapeValidator

DATA = Path(__file__).parent / "data" / "hl7v2"
SAMPLES = Path(__file__).parents[1] / "mappings" / "samples" / "hl7v2"

Path_ = tuple[Any, ...]


@cache
def corpus_resources() -> tuple[str, ...]:
    """Every resource our maps build from the corpus, one per distinct layout (as JSON text)."""
    translator = Hl7v2Translator(validation="full")
    seen: dict[str, str] = {}
    for path in sorted(DATA.glob("*.hl7")) + sorted(SAMPLES.glob("*.hl7")):
        raw = path.read_bytes()
        for part in split_batch(raw) if path.name.startswith("batch") else [raw]:
            try:
                bundle = translator.translate_raw(part)[0].bundle
            except Exception:
                continue
            for entry in bundle["entry"]:
                resource = entry["resource"]
                seen.setdefault(json.dumps(_layout(resource)), json.dumps(resource))
    return tuple(seen.values())


def _layout(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _layout(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_layout(v) for v in node]
    return type(node).__name__


def _sites(node: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _sites(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _sites(value, (*path, index))


def _set(resource: dict[str, Any], path: Path_, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


def _delete(resource: dict[str, Any], path: Path_) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return out


BAD_STRINGS = [
    "",
    " padded",
    "padded ",
    "two  spaces",
    "line\nbreak",
    "x" * 300,
    "2025-13-01",
    "2025-02-30",
    "2025-01-02T10:00",
    "2025-01-02T10:00:00",
    "2025-01-02T25:00:00+01:00",
    "2025-01-02T10:00:00+15:00",
    "10:61:00",
    "has space",
    "ünïcödé",
    "1e5",
    "-0",
    "http://exa mple.org",
]
WRONG_TYPES: list[Any] = [7, 7.5, True, False, None, {}, [], {"value": "x"}, ["x"]]


Mutation = tuple[str, Callable[[], dict[str, Any]]]


def mutations(resource: dict[str, Any]) -> Iterator[Mutation]:
    """(label, builder of the mutated copy) for every way of getting one element wrong."""
    r = resource
    for path, value in _sites(resource):
        if not path:
            yield "unknown element at root", lambda: dict(r, unknownElement="x")
            continue
        if isinstance(value, dict):
            yield f"unknown element in {path}", lambda p=path, v=value: _set(r, p, dict(v, unknownElement="x"))
            yield f"{path} as list", lambda p=path, v=value: _set(r, p, [v])
            yield f"{path} empty object", lambda p=path: _set(r, p, {})
        elif isinstance(value, list):
            yield f"{path} unwrapped", lambda p=path, v=value: _set(r, p, v[0] if v else None)
            yield f"{path} empty list", lambda p=path: _set(r, p, [])
            yield f"{path} null item", lambda p=path, v=value: _set(r, p, [*v, None])
        else:
            for wrong in WRONG_TYPES + BAD_STRINGS:
                if wrong != value or type(wrong) is not type(value):
                    yield f"{path} = {wrong!r}", lambda p=path, w=wrong: _set(r, p, copy.deepcopy(w))
            if isinstance(value, str):
                yield f"{path} as list", lambda p=path, v=value: _set(r, p, [v])
        if isinstance(path[-1], str) and path[-1] != "resourceType":
            yield f"{path} missing", lambda p=path: _delete(r, p)
    if any(k.startswith(("value", "effective")) for k in resource):
        yield "second choice type", lambda: dict(r, valueString="x", valueBoolean=True)
    other = "Patient" if resource["resourceType"] != "Patient" else "Group"
    yield "other resourceType", lambda: dict(r, resourceType=other)


def verdict(check: Any, resource: dict[str, Any]) -> str:
    try:
        check(resource)
    except ValidationFailed as exc:
        return f"rejected: {exc}"
    return "accepted"


@pytest.fixture(scope="module")
def warm_validator() -> ShapeValidator:
    validator = ShapeValidator()
    for text in corpus_resources():
        validator(json.loads(text))
    return validator


def test_corpus_layouts_take_the_fast_path(warm_validator: ShapeValidator) -> None:
    resources = [json.loads(text) for text in corpus_resources()]
    assert len(resources) > 100
    before = warm_validator.fast_hits
    warm_validator.validate_all(resources)
    assert warm_validator.fast_hits - before == len(resources), "every layout seen once is checked fast"


def test_every_mutation_gets_the_full_verdict(warm_validator: ShapeValidator) -> None:
    """A deterministic sample of every kind of mutation, across every layout."""
    rng = random.Random(20250314)
    checked = accepted_fast = 0
    for text in corpus_resources():
        resource = json.loads(text)
        candidates = list(mutations(resource))
        for label, build in rng.sample(candidates, min(len(candidates), 30)):
            mutated = build()
            before = warm_validator.fast_hits
            shape = verdict(warm_validator, mutated)
            full = verdict(validate_resource, mutated)
            assert shape == full, f"{resource['resourceType']} {label}: shape {shape!r}, full {full!r}"
            checked += 1
            accepted_fast += warm_validator.fast_hits - before
    assert checked > 5000
    assert accepted_fast > 0, "some mutations keep a known layout and valid values: checked fast"


@pytest.mark.parametrize("kind", ["Observation", "Patient", "Encounter", "DiagnosticReport", "ServiceRequest"])
def test_all_mutations_of_one_resource_per_type(warm_validator: ShapeValidator, kind: str) -> None:
    """Exhaustively, for one resource of each main type."""
    resource = max(
        (json.loads(t) for t in corpus_resources() if json.loads(t)["resourceType"] == kind),
        key=lambda r: len(json.dumps(r)),
    )
    for label, build in mutations(resource):
        mutated = build()
        assert verdict(warm_validator, mutated) == verdict(validate_resource, mutated), f"{kind} {label}"


def test_values_accepted_before_are_not_trusted_elsewhere(warm_validator: ShapeValidator) -> None:
    """A string accepted as ``string`` is still checked as ``code`` / ``id`` / ``dateTime``."""
    observation = next(json.loads(t) for t in corpus_resources() if json.loads(t)["resourceType"] == "Observation")
    free_text = "a value with  two spaces"
    warm_validator(dict(observation, note=[{"text": free_text}]))  # accepted as string
    for key in ("status", "id", "effectiveDateTime"):
        mutated = dict(observation, **{key: free_text})
        assert verdict(warm_validator, mutated) == verdict(validate_resource, mutated) != "accepted"


def test_batch_raises_for_the_first_invalid_resource() -> None:
    resources = [json.loads(t) for t in corpus_resources()[:20]]
    validator = ShapeValidator()
    validator.validate_all(resources)
    bad_late = _set(resources[15], ("id",), "bad id")
    bad_early = _set(resources[3], ("id",), "also bad")
    batch = [*resources[:3], bad_early, *resources[4:15], bad_late]
    with pytest.raises(ValidationFailed) as info:
        validator.validate_all(batch)
    assert str(info.value) == verdict(validate_resource, bad_early).removeprefix("rejected: ")
