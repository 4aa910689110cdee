"""``validate_mappings`` and mapping-file errors: every problem names file and line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mappings
from adapters.hl7v2 import Hl7v2Translator, validate_mappings
from hub.errors import ConfigError
from hub.mapping import validate_mappings as generic_validate
from hub.mapping.schema import check

SHIPPED = mappings.directory()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(SHIPPED / "hl7v2", target / "hl7v2")
    shutil.copytree(SHIPPED / "conceptmaps", target / "conceptmaps")
    shutil.copytree(SHIPPED / "schema", target / "schema")
    return target


def add(root: Path, name: str, text: str) -> None:
    (root / "hl7v2" / name).write_text(text)


def test_shipped_mappings_are_valid() -> None:
    assert validate_mappings(SHIPPED) == []
    assert generic_validate(SHIPPED) == []


def test_mappings_package_paths() -> None:
    assert (mappings.schema_path()).is_file()
    assert (mappings.samples() / "oru_r01.hl7").is_file()
    assert mappings.site_directory().is_dir()


def test_invalid_yaml_names_file_and_line(root: Path) -> None:
    add(root, "segments/broken.yaml", "kind: segment\nid: broken\nrules:\n  - {source: PID-3, target: x\n")
    problems = validate_mappings(root)
    assert len(problems) == 1
    assert problems[0].file.endswith("hl7v2/segments/broken.yaml")
    assert problems[0].line == 5 and "invalid YAML" in problems[0].message


def test_schema_error_names_the_key(root: Path) -> None:
    add(root, "segments/typo.yaml", "kind: segment\nid: typo\nrules:\n  - source: PID-3\n    traget: name\n")
    (problem,) = validate_mappings(root)
    assert problem.line == 5 and "traget" in problem.message and "unknown key" in problem.message
    assert str(problem).startswith("mappings/hl7v2/segments/typo.yaml:5: ")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{source: PID-3, map: No-Such-Map, target: x}", "unknown map 'No-Such-Map'"),
        ("{source: PID-3, transform: nope, target: x}", "unknown transform 'nope'"),
        ("{source: PID-3, vocabulary: no-such-cm, target: x}", "unknown ConceptMap 'no-such-cm'"),
        ("{source: pid-three, target: x}", "source 'pid-three'"),
        ("{source: PID-3, target: 'a..b'}", "rules[0].target: not a valid FHIR target path"),
        ("{constant: 1}", "needs a 'target'"),
        ("{source: PID-3}", "needs a 'target'"),
        ("{source: PID-3, target: x, repeats: all}", "needs a list target"),
        ("{source: PID-3, target: x, when: {path: PID-8}}", "needs equals, in, not_in or matches"),
    ],
)
def test_rule_problems(root: Path, rule: str, message: str) -> None:
    add(root, "segments/bad.yaml", f"kind: segment\nid: bad\nrules:\n  - {rule}\n")
    problems = validate_mappings(root)
    assert problems, rule
    assert problems[0].file.endswith("bad.yaml") and problems[0].line == 4
    assert message in problems[0].message


def test_message_file_problems(root: Path) -> None:
    add(
        root,
        "messages/bad.yaml",
        """kind: message
id: BAD
structures: [ZZZ_Z01]
resources:
  - name: a
    resourceType: Patient
    identity: no-such-identity
    rules:
      - {ref: b, target: link}
""",
    )
    messages = {(p.line, p.message) for p in validate_mappings(root)}
    assert (9, "ref 'b' names no resource of this message map") in messages
    assert (5, "unknown identity 'no-such-identity'") in messages


def test_map_cycle_is_reported(root: Path) -> None:
    add(root, "datatypes/A.yaml", "kind: datatype\nid: A\nrules:\n  - {source: '1', map: B, target: x}\n")
    add(root, "datatypes/B.yaml", "kind: datatype\nid: B\nrules:\n  - {source: '1', map: A, target: y}\n")
    assert any("applies itself" in p.message for p in validate_mappings(root))


def test_invalid_conceptmap_is_reported(root: Path) -> None:
    (root / "conceptmaps" / "bad.json").write_text(
        json.dumps({"resourceType": "ConceptMap", "id": "bad", "status": "not-a-status-code with spaces  "})
    )
    (root / "conceptmaps" / "noid.json").write_text(json.dumps({"resourceType": "ConceptMap"}))
    problems = [str(p) for p in validate_mappings(root)]
    assert any("bad.json" in p and "not valid R4" in p for p in problems)
    assert any("noid.json" in p and "has no id" in p for p in problems)


def test_translator_refuses_bad_mappings(root: Path) -> None:
    add(root, "segments/typo.yaml", "kind: segment\nid: typo\nrules:\n  - source: PID-3\n    traget: name\n")
    with pytest.raises(ConfigError) as info:
        Hl7v2Translator(root)
    assert "segments/typo.yaml:5" in str(info.value) and info.value.key == "mappings"


def test_site_layer_overrides_a_map(root: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "hl7v2" / "segments").mkdir(parents=True)
    original = (root / "hl7v2" / "segments" / "PID-Patient.yaml").read_text()
    (site / "hl7v2" / "segments" / "PID-Patient.yaml").write_text(
        original.replace("  - {constant: true, target: active}\n", "  - {constant: false, target: active}\n")
    )
    (site / "conceptmaps").mkdir()
    (site / "conceptmaps" / "sex.json").write_text(
        json.dumps(
            {
                "resourceType": "ConceptMap",
                "id": "table-hl70001-to-administrative-gender",
                "status": "active",
                "group": [
                    {
                        "source": "http://terminology.hl7.org/CodeSystem/v2-0001",
                        "target": "http://hl7.org/fhir/administrative-gender",
                        "element": [{"code": "X", "target": [{"code": "other", "equivalence": "equivalent"}]}],
                    }
                ],
            }
        )
    )
    assert validate_mappings(root, site_dir=site) == []
    tr = Hl7v2Translator(root, site)
    data = Path(__file__).parent / "data" / "hl7v2"
    translation, _ = tr.translate_raw((data / "adt_a28_v25.hl7").read_bytes())
    patient = translation.bundle["entry"][0]["resource"]
    assert patient["active"] is False and patient["gender"] == "other"


def test_schema_checker_reports_lines() -> None:
    schema = json.loads(mappings.schema_path().read_text())
    assert check({"kind": "segment", "id": "x", "rules": []}, schema) == []
    problems = check({"kind": "nope", "id": "x"}, schema)
    assert problems and all(isinstance(p.line, int) for p in problems)


def test_bad_write_mode_is_rejected_naming_file_and_line(root: Path) -> None:
    """``write:`` is replace or if_absent: ``meoring mappings validate`` names file and line of any
    other value (the schema check), and so does the compiler when no schema is there."""
    path = root / "hl7v2" / "messages" / "ORU_R01.yaml"
    lines = path.read_text().splitlines(keepends=True)
    line = next(n for n, text in enumerate(lines, 1) if text.strip() == "write: if_absent")
    lines[line - 1] = lines[line - 1].replace("if_absent", "sometimes")
    path.write_text("".join(lines))
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli.main", "mappings", "validate", str(root)],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    (reported,) = [text for text in done.stdout.splitlines() if "write" in text]
    assert reported.startswith(f"mappings/hl7v2/messages/ORU_R01.yaml:{line}: ")
    assert "must be one of replace, if_absent" in reported
    (root / "schema" / "mapping.schema.json").unlink()
    (problem,) = validate_mappings(root)
    assert (problem.file, problem.line) == ("mappings/hl7v2/messages/ORU_R01.yaml", line)
    assert problem.message == "'write' must be replace or if_absent"
