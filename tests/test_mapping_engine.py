"""The protocol-neutral mapping engine (hub.mapping), driven by a tiny JSON dialect defined here:
the engine must work for any adapter that supplies paths and nodes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from hub.errors import MappingError, ValidationFailed
from hub.fhir.validation import validate_resource
from hub.mapping import Choice, MappingEngine, MappingRepository, make_id
from hub.mapping.fastvalidate import ShapeValidator
from hub.mapping.source import ABSENT, NULL, VALUED, value_pure
from hub.mapping.target import assign, parse_target


class JsonNode:
    """Source node over JSON: paths are '/'-separated keys; lists yield one node per item."""

    def __init__(self, value: Any, location: str = "$") -> None:
        self.data = value
        self._location = location

    @property
    def location(self) -> str:
        return self._location

    def select(self, path: Any) -> Sequence[JsonNode]:
        nodes = [self]
        for key in path:
            found: list[JsonNode] = []
            for node in nodes:
                value = node.data.get(key) if isinstance(node.data, dict) and key != "." else node.data
                if key == ".":
                    found.append(node)
                elif isinstance(value, list):
                    found += [JsonNode(v, f"{node.location}/{key}[{i}]") for i, v in enumerate(value)]
                elif value is not None:
                    found.append(JsonNode(value, f"{node.location}/{key}"))
            nodes = found
        return nodes

    def value(self, path: Any) -> str | None:
        nodes = [self] if path is None else self.select(path)
        if not nodes or nodes[0].data in (None, "", '""') or isinstance(nodes[0].data, dict | list):
            return None
        return str(nodes[0].data)

    def presence(self, path: Any) -> str:
        nodes = self.select(path)
        if not nodes:
            return ABSENT
        return NULL if nodes[0].data == '""' else VALUED


def upper(node: Any, ctx: Any, args: Mapping[str, Any]) -> Any:
    value = node.value(None)
    return value.upper() if value else None


def typed(node: Any, ctx: Any, args: Mapping[str, Any]) -> Any:
    value = node.value(None)
    return Choice("Integer", int(value)) if value and value.isdigit() else Choice("String", value)


class JsonDialect:
    name = "json"

    def compile_path(self, text: str) -> tuple[str, ...]:
        if not text or " " in text:
            raise ValueError("bad path")
        return tuple(text.split("/"))

    @property
    def functions(self) -> Mapping[str, Any]:
        return {"upper": upper, "typed": typed}


def write(root: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return root


GENDER_MAP = {
    "resourceType": "ConceptMap",
    "id": "sex",
    "status": "active",
    "group": [
        {
            "source": "urn:src:sex",
            "target": "http://hl7.org/fhir/administrative-gender",
            "element": [
                {"code": "F", "target": [{"code": "female", "equivalence": "equivalent"}]},
                {"code": "M", "target": [{"code": "male", "equivalence": "equivalent"}]},
            ],
        }
    ],
}
STATUS_MAP = {
    "resourceType": "ConceptMap",
    "id": "status",
    "status": "active",
    "group": [
        {
            "source": "urn:src:status",
            "target": "http://hl7.org/fhir/observation-status",
            "element": [{"code": "F", "target": [{"code": "final", "equivalence": "equivalent"}]}],
            "unmapped": {"mode": "fixed", "code": "unknown"},
        }
    ],
}
MESSAGE = """
kind: message
id: demo
structures: [DEMO]
resources:
  - name: patient
    resourceType: Patient
    from: person
    identity:
      - {keys: [mrn, authority], namespace: global}
      - {keys: [mrn]}
    rules:
      - {source: mrn, target: "identifier[].value"}
      - {source: family, target: "name[1].family"}
      - {source: given, target: "name[1].given[]", repeats: all}
      - {source: family, target: "name[1].text", transform: upper}
      - {source: sex, target: gender, vocabulary: sex}
      - {constant: true, target: active}
      - {source: deceased, target: deceasedBoolean, when: {not: {valued: deceased}}, default: false}
  - scope: orders
    resources:
      - name: report
        resourceType: DiagnosticReport
        identity: [{keys: [{resource: patient}, number]}]
        rules:
          - {constant: {text: panel}, target: code}
          - {source: status, target: status, vocabulary: status, default: unknown}
          - {ref: patient, target: subject}
          - {refs: obs, target: "result[]"}
      - scope: results
        resources:
          - name: obs
            resourceType: Observation
            duplicates: suffix
            identity: [{keys: [{resource: report}, code, {path: sub, optional: true}]}]
            when: {not: {null: value}}
            rules:
              - {source: status, target: status, vocabulary: status, as: code}
              - {source: code, target: "code.coding[1].code"}
              - {source: value, target: "value[x]", transform: typed}
              - {source: note, target: "note[].text", repeats: all}
              - {source: note, target: method.text, repeats: join, when: {built: report}}
              - {ref: patient, target: subject}
"""


@pytest.fixture
def engine_setup(tmp_path: Path) -> tuple[MappingRepository, MappingEngine]:
    root = write(
        tmp_path / "maps",
        {"json/messages/demo.yaml": MESSAGE, "conceptmaps/sex.json": GENDER_MAP, "conceptmaps/status.json": STATUS_MAP},
    )
    repo = MappingRepository.load(root, channel="json", dialect=JsonDialect())
    assert repo.problems == []
    return repo, MappingEngine(repo.concepts)


DOC = {
    "person": {"mrn": "123", "authority": "HOSP", "family": "Doe", "given": ["Jane", "Q"], "sex": "F"},
    "orders": [
        {
            "number": "A1",
            "status": "F",
            "results": [
                {"code": "x", "value": "7", "status": "F", "note": ["one", "two"]},
                {"code": "x", "value": "seven", "status": "Q"},
                {"code": "y", "value": '""'},
            ],
        },
        {"number": "A2", "status": "P", "results": [{"code": "x", "value": "1", "status": "F"}]},
    ],
}


def build(engine_setup: tuple[MappingRepository, MappingEngine], doc: Any = DOC, explain: bool = False) -> Any:
    repo, engine = engine_setup
    message = repo.message_for("DEMO", "")
    assert message is not None
    return engine.run(message, JsonNode(doc), namespace="sender-1", message_key="M1", explain=explain)


def test_resources_ids_and_references(engine_setup: Any) -> None:
    result = build(engine_setup)
    kinds = [b.resource_type for b in result.resources]
    assert kinds == ["Patient", "DiagnosticReport", "Observation", "Observation", "DiagnosticReport", "Observation"]
    patient, report1, obs1, obs2, report2, obs3 = (b.body for b in result.resources)
    assert patient["id"] == make_id("global", "Patient", ["123", "HOSP"])
    assert patient["name"] == [{"family": "Doe", "given": ["Jane", "Q"], "text": "DOE"}]
    assert patient["gender"] == "female" and patient["active"] is True and patient["deceasedBoolean"] is False
    assert report1["result"] == [{"reference": f"Observation/{obs1['id']}"}, {"reference": f"Observation/{obs2['id']}"}]
    assert report2["result"] == [{"reference": f"Observation/{obs3['id']}"}]
    assert report1["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert obs1["id"] != obs2["id"], "duplicates: suffix"
    assert obs1["valueInteger"] == 7 and obs2["valueString"] == "seven"
    assert obs1["note"] == [{"text": "one"}, {"text": "two"}] and obs1["method"]["text"] == "one\ntwo"
    assert obs2["status"] == "unknown"  # fixed unmapped code of the ConceptMap
    assert report2["status"] == "unknown" and report1["status"] == "final"
    assert any("'Q' not in ConceptMap status" in w for w in result.warnings)
    for built in result.resources:
        validate_resource(built.body)


def test_same_input_same_ids_and_constants_not_shared(engine_setup: Any) -> None:
    first, second = build(engine_setup), build(engine_setup)
    assert [b.body for b in first.resources] == [b.body for b in second.resources]
    first.resources[1].body["code"]["text"] = "changed"
    assert build(engine_setup).resources[1].body["code"] == {"text": "panel"}


def test_identity_falls_back_and_reports(engine_setup: Any) -> None:
    doc = {"person": {"mrn": "123", "family": "Doe"}}
    (patient,) = build(engine_setup, doc).resources
    assert patient.id == make_id("sender-1", "Patient", ["123"])  # no authority: per sender
    result = build(engine_setup, {"person": {"family": "Doe"}})
    assert result.resources[0].id == make_id("sender-1", "Patient", ["message", "M1", "patient", "1"])
    assert any("no business identifier" in w for w in result.warnings)


def test_explain_trace(engine_setup: Any) -> None:
    result = build(engine_setup, explain=True)
    entries = {(t.resource.split("/")[0], t.element): t for t in result.trace}
    gender = entries[("Patient", "gender")]
    assert gender.source == "$/person/sex" and gender.rule.endswith("demo.yaml:17")
    assert entries[("Patient", "name[0].given[1]")].source == "$/person/given[1]"
    assert entries[("DiagnosticReport", "result[0]")].source == "ref obs"


def test_required_rule_fails_the_message(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "json/messages/m.yaml": """
kind: message
id: m
structures: [DEMO]
resources:
  - name: p
    resourceType: Patient
    rules: [{source: mrn, target: "identifier[].value", required: true}]
"""
        },
    )
    repo = MappingRepository.load(root, channel="json", dialect=JsonDialect())
    message = repo.message_for("DEMO", "")
    assert message is not None
    with pytest.raises(MappingError) as info:
        MappingEngine(repo.concepts).run(message, JsonNode({}), namespace="s", message_key="k")
    assert info.value.code == "required" and "m.yaml:8" in str(info.value)


def test_site_override_layer(tmp_path: Path) -> None:
    root = write(
        tmp_path / "base",
        {"json/messages/demo.yaml": MESSAGE, "conceptmaps/sex.json": GENDER_MAP, "conceptmaps/status.json": STATUS_MAP},
    )
    site_map = {
        "resourceType": "ConceptMap",
        "id": "sex",
        "status": "active",
        "group": [
            {
                "source": "urn:src:sex",
                "target": "http://hl7.org/fhir/administrative-gender",
                "element": [{"code": "X", "target": [{"code": "other", "equivalence": "equivalent"}]}],
            }
        ],
    }
    site = write(tmp_path / "site", {"conceptmaps/sex.json": site_map})
    repo = MappingRepository.load(root, channel="json", dialect=JsonDialect(), site_dir=site)
    table = repo.concepts.get("sex")
    assert table is not None
    assert table.lookup("X").coding is not None and table.lookup("X").coding.code == "other"  # site code added
    assert table.lookup("F").coding is not None and table.lookup("F").coding.code == "female"  # base kept
    assert table.lookup("f").mapped  # case-insensitive


@pytest.mark.parametrize(
    ("target", "values", "expected"),
    [
        ("a.b", ["x", "y"], {"a": {"b": "y"}}),
        ("a[]", ["x", "y"], {"a": ["x", "y"]}),
        ("a[].b", ["x", "y"], {"a": [{"b": "x"}, {"b": "y"}]}),
        ("a[1].b", ["x", "y"], {"a": [{"b": "y"}]}),
        ("a[k].b[]", ["x", "y"], {"a": [{"b": ["x", "y"]}]}),
        ("value[x]", [Choice("String", "s")], {"valueString": "s"}),
    ],
)
def test_target_paths(target: str, values: list[Any], expected: dict[str, Any]) -> None:
    obj: dict[str, Any] = {}
    slots: dict[Any, int] = {}
    steps = parse_target(target)
    for value in values:
        assign(obj, steps, value, slots)
    assert obj == expected


def test_target_path_errors() -> None:
    with pytest.raises(ValueError, match="bad target path step"):
        parse_target("a..b")
    with pytest.raises(ValueError, match="last step"):
        parse_target("value[x].b")


def test_ids_are_short_stable_and_never_numeric() -> None:
    ids = {make_id("ns", "Observation", [str(i)]) for i in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 31 and i[0] == "m" and not i.isdigit() for i in ids)
    assert make_id("ns", "Patient", ["1"]) != make_id("ns", "Encounter", ["1"])
    assert make_id("a", "Patient", ["1"]) != make_id("b", "Patient", ["1"])


OBSERVATION = {
    "resourceType": "Observation",
    "id": "m0123",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
    "effectiveDateTime": "2025-01-02T03:04:05+01:00",
    "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    "interpretation": [{"coding": [{"code": "H"}]}],
    "note": [{"text": "n"}],
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("status",), "final "),
        (("status",), ""),
        (("effectiveDateTime",), "2025-13-02"),
        (("effectiveDateTime",), "2025-01-02T03:04"),
        (("id",), "has space"),
        (("code", "coding", 0, "code"), " 2345-7"),
        (("code", "coding", 0, "system"), "has space"),
        (("valueQuantity", "value"), "5.4"),
        (("valueQuantity", "value"), True),
        (("note", 0, "text"), ""),
        (("interpretation", 0, "coding", 0, "code"), 7),
        (("resourceType",), "Patient"),
    ],
)
def test_shape_validator_agrees_with_full_validation(path: tuple[Any, ...], value: Any) -> None:
    validator = ShapeValidator()
    validator(json.loads(json.dumps(OBSERVATION)))  # learn the shape
    mutated = json.loads(json.dumps(OBSERVATION))
    node = mutated
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        validate_resource(mutated)
        full_ok = True
    except ValidationFailed:
        full_ok = False
    try:
        validator(mutated)
        shape_ok = True
    except ValidationFailed:
        shape_ok = False
    assert shape_ok == full_ok


def test_shape_validator_raises_the_full_error() -> None:
    validator = ShapeValidator()
    validator(dict(OBSERVATION))
    bad = dict(OBSERVATION, status="final ")
    with pytest.raises(ValidationFailed) as shape_error:
        validator(bad)
    with pytest.raises(ValidationFailed) as full_error:
        validate_resource(bad)
    assert str(shape_error.value) == str(full_error.value)


# -- compiled plans (every run but --explain) against the tracing interpreter ---------------------
def _bodies(result: Any) -> list[tuple[str, str, Any]]:
    return [(b.resource_type, b.id, b.body) for b in result.resources]


@pytest.mark.parametrize(
    "doc",
    [
        DOC,
        {"person": {"mrn": "123", "family": "Doe"}},
        {"person": {"family": "Doe"}, "orders": [{"number": "B", "results": [{"code": "z"}, {"code": "z"}]}]},
        {},
    ],
)
def test_compiled_plans_build_what_the_interpreter_builds(engine_setup: Any, doc: Any) -> None:
    fast, traced = build(engine_setup, doc), build(engine_setup, doc, explain=True)
    assert _bodies(fast) == _bodies(traced)
    assert fast.warnings == traced.warnings


class MemoNode(JsonNode):
    """A JSON node that offers what memoising a map needs: a key for its value."""

    def select(self, path: Any) -> Sequence[MemoNode]:
        return [MemoNode(node.data, node.location) for node in super().select(path)]

    def memo_key(self) -> tuple[str, str]:
        return ("json", json.dumps(self.data, sort_keys=True))


class RelativePath(tuple[str, ...]):
    """JSON paths only ever descend into the node they are read from."""

    value_relative = True


CALLS: list[str] = []


@value_pure
def counted(node: Any, ctx: Any, args: Mapping[str, Any]) -> Any:
    CALLS.append(node.location)
    return node.value(None)


class MemoDialect(JsonDialect):
    def compile_path(self, text: str) -> tuple[str, ...]:
        return RelativePath(super().compile_path(text))

    @property
    def functions(self) -> Mapping[str, Any]:
        return {"upper": upper, "typed": typed, "counted": counted}


MEMO_MESSAGE = """
kind: message
id: memo
structures: [MEMO]
resources:
  - name: obs
    resourceType: Observation
    from: items
    identity: [{keys: [id]}]
    rules:
      - {map: first-named}
      - {source: given, target: "name[1].given[]", repeats: all}
      - {source: concept, map: coded, target: code}
      - {source: label, target: "code.coding[1].display"}
      - {source: concept, map: coded, target: "category[]", repeats: all}
      - {source: flag, target: "interpretation[]", map: flagged, repeats: all}
  - name: person
    resourceType: Patient
    from: items
    identity: [{keys: [id]}]
    rules:
      - {map: first-named}
      - {source: given, target: "name[2].given[]", repeats: all}
"""
CODED = """
kind: datatype
id: coded
rules:
  - {source: code, target: "coding[1].code", transform: counted}
  - {source: system, target: "coding[1].system"}
  - {constant: {extension: [{url: "urn:x", valueString: fixed}]}, target: "coding[2]"}
"""
FLAGGED = """
kind: datatype
id: flagged
rules:
  - {source: ".", target: "coding[1].code", vocabulary: sex, as: code}
"""
FIRST_NAMED = """
kind: segment
id: first-named
rules:
  - {source: family, target: "name[1].family", transform: upper}
  - {constant: final, target: status}
"""
ITEMS = {
    "items": [
        {
            "id": str(n),
            "family": "Doe",
            "given": ["A", "B"],
            "concept": {"code": "2345-7", "system": "http://loinc.org"},
            "label": f"glucose {n}",
            "flag": ["F", "Q"],
        }
        for n in range(4)
    ]
}


@pytest.fixture
def memo_setup(tmp_path: Path) -> tuple[MappingRepository, MappingEngine]:
    root = write(
        tmp_path / "maps",
        {
            "json/messages/memo.yaml": MEMO_MESSAGE,
            "json/datatypes/coded.yaml": CODED,
            "json/datatypes/flagged.yaml": FLAGGED,
            "json/segments/first-named.yaml": FIRST_NAMED,
            "conceptmaps/sex.json": GENDER_MAP,
        },
    )
    repo = MappingRepository.load(root, channel="json", dialect=MemoDialect())
    assert repo.problems == []
    return repo, MappingEngine(repo.concepts)


def run_memo(setup: tuple[MappingRepository, MappingEngine], explain: bool = False) -> Any:
    repo, engine = setup
    message = repo.message_for("MEMO", "")
    assert message is not None
    return engine.run(message, MemoNode(ITEMS), namespace="s", message_key="k", explain=explain)


def test_memoised_maps_give_equal_fresh_objects_and_keep_their_slots(memo_setup: Any) -> None:
    CALLS.clear()
    first = run_memo(memo_setup)
    evaluations = len(CALLS)
    second = run_memo(memo_setup)
    assert len(CALLS) == evaluations, "the second message reuses every memoised output"
    assert evaluations < 8, "a repeated value within a message is memoised too"
    traced = run_memo(memo_setup, explain=True)
    assert _bodies(first) == _bodies(second) == _bodies(traced)
    assert first.warnings == second.warnings == traced.warnings
    obs = [b.body for b in second.resources]
    assert obs[0]["code"]["coding"][0] == {"code": "2345-7", "system": "http://loinc.org", "display": "glucose 0"}
    assert obs[1]["code"]["coding"][0]["display"] == "glucose 1", "the label lands in the memoised coding[1]"
    assert obs[0]["code"] is not obs[1]["code"] and obs[0]["code"]["coding"] is not obs[1]["code"]["coding"]
    obs[0]["code"]["coding"][1]["extension"][0]["valueString"] = "changed"
    assert run_memo(memo_setup).resources[0].body["code"]["coding"][1]["extension"][0]["valueString"] == "fixed"


def test_a_map_that_warned_is_evaluated_again(memo_setup: Any) -> None:
    for _ in range(3):  # the unmapped code "Q" warns every time: its output is never memoised
        result = run_memo(memo_setup)
        assert any("'Q' not in ConceptMap sex" in w for w in result.warnings)


def test_a_map_merged_first_keeps_its_own_slots(memo_setup: Any) -> None:
    """``{map: first-named}`` writes name[1]. In the Observation a later ``name[1].given[]``
    starts its own element (the map's slot belongs to the map's output): the map is built and
    merged. In the Patient nothing else names name[1]: the map writes into the resource
    directly. Both as the interpreter does it."""
    repo, engine = memo_setup
    message = repo.message_for("MEMO", "")
    specs = {spec.name: spec for spec in message.resources()}
    plans = engine._plans  # white box: which way each resource's first rule is compiled
    assert not plans.rule_list(specs["obs"].rules).source.splitlines()[2].startswith("    R")
    assert plans.rule_list(specs["person"].rules).source.splitlines()[2].startswith("    R")
    result, traced = run_memo(memo_setup), run_memo(memo_setup, explain=True)
    assert _bodies(result) == _bodies(traced)
    obs, person = result.resources[0].body, result.resources[4].body
    assert obs["name"] == [{"family": "DOE"}, {"given": ["A", "B"]}] and obs["status"] == "final"
    assert person["name"] == [{"family": "DOE"}, {"given": ["A", "B"]}] and person["status"] == "final"


@pytest.mark.parametrize("seed", range(20))
def test_compiled_targets_write_what_assign_writes(seed: int) -> None:
    import random

    from hub.mapping.target import compile_target

    rng = random.Random(seed)
    targets = ["a", "a.b", "a[]", "a[].b", "a[1].b", "a[2].b[]", "a[k].b.c", "a.b[1]", "x[1].y[z].w", "v[x]", "a[1]"]
    obj_a: dict[str, Any] = {}
    obj_b: dict[str, Any] = {}
    slots_a: dict[Any, Any] = {}
    slots_b: dict[Any, Any] = {}
    for step in range(30):
        steps = parse_target(rng.choice(targets))
        value: Any = rng.choice([f"s{step}", {"k": step}, [step], Choice("String", str(step))])
        if (steps[-1].mode == 3) != isinstance(value, Choice):
            value = Choice("Integer", step) if steps[-1].mode == 3 else step
        assign(obj_a, steps, value, slots_a)
        compile_target(steps)(obj_b, value, slots_b)
    assert obj_a == obj_b


def test_slots_never_follow_a_reused_object_id() -> None:
    gone: dict[str, Any] = {"name": [{"family": "x"}]}
    fresh: dict[str, Any] = {"name": [{"family": "y"}, {"family": "z"}]}
    slots: Any = {(id(fresh), "name", "1"): (1, gone)}  # as if ``gone`` had had fresh's id
    assign(fresh, parse_target("name[1].given"), "g", slots)
    assert fresh["name"] == [{"family": "y"}, {"family": "z"}, {"given": "g"}]


def test_full_urls_are_uuid5() -> None:
    import uuid

    from hub.mapping.bundle import _FULL_URL_NAMESPACE, full_url

    for kind, rid in [("Patient", "m1"), ("Observation", "m" + "a" * 30), ("X", ""), ("Ünï", "é/ü")]:
        assert full_url(kind, rid) == f"urn:uuid:{uuid.uuid5(_FULL_URL_NAMESPACE, f'{kind}/{rid}')}"
