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
from hub.mapping.source import ABSENT, NULL, VALUED
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
