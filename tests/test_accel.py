"""Compiled accelerators (hub.accel): used only when built from the sources on disk, and the
compiled modules translate every corpus message exactly as the plain Python does."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub import accel

ROOT = Path(__file__).resolve().parents[1]

# Translates the corpus and the bundled samples with a fixed receipt time; prints one JSON line:
# which files the modules came from and a digest of every bundle / error text.
_TRANSLATE_ALL = r"""
import hashlib, json, sys
from datetime import datetime, UTC
from pathlib import Path
from hub import accel
import adapters.hl7v2.parser as parser, hub.mapping.plan as plan
from adapters.hl7v2 import Hl7v2Translator
from hub.errors import MappingError
root = Path(sys.argv[1])
translator = Hl7v2Translator()
received = datetime(2025, 1, 1, tzinfo=UTC)
h = hashlib.sha256()
count = 0
files = sorted((root / "tests/data/hl7v2").glob("*.hl7")) + sorted((root / "mappings/samples/hl7v2").glob("*.hl7"))
for path in files:
    try:
        translation, _ = translator.translate_raw(path.read_bytes(), received_at=received)
        out = json.dumps([translation.bundle, translation.unconsumed, translation.warnings], sort_keys=True)
    except MappingError as exc:
        out = f"error {exc.location} {exc}"
    h.update(path.name.encode() + b"\0" + out.encode() + b"\0")
    count += 1
print(json.dumps({"active": accel.state().active, "parser": parser.__file__, "plan": plan.__file__,
                  "count": count, "digest": h.hexdigest()}))
"""


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def _copy_sources(destination: Path) -> None:
    for name in accel._DIGEST_FILES:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def test_digest_follows_the_compiled_sources_and_nothing_else(tmp_path: Path) -> None:
    _copy_sources(tmp_path)
    assert accel.digest(tmp_path) == accel.digest(ROOT)
    (tmp_path / "adapters/hl7v2/service.py").write_text("# not compiled, not covered\n")
    assert accel.digest(tmp_path) == accel.digest(ROOT)
    source = tmp_path / "adapters/hl7v2/source.py"
    source.write_text(source.read_text() + "\n# an edit\n")
    assert accel.digest(tmp_path) != accel.digest(ROOT), "an edited compiled module retires the build"
    _copy_sources(tmp_path)
    model = tmp_path / "hub/mapping/model.py"  # imported by compiled code: its types matter too
    model.write_text(model.read_text() + "\n")
    assert accel.digest(tmp_path) != accel.digest(ROOT)


def test_a_build_for_other_sources_is_never_loaded(tmp_path: Path) -> None:
    stale = tmp_path / "0123456789abcdef01234567"
    stale.mkdir()
    (stale / "manifest.json").write_text(json.dumps({"modules": {"adapters.hl7v2.parser": "x.so"}}))
    done = _run(_TRANSLATE_ALL, str(ROOT), MEORING_ACCEL_DIR=str(tmp_path), MEORING_ACCEL="")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["active"] is False
    assert result["parser"].endswith("parser.py")


def test_an_incomplete_build_is_not_loaded(tmp_path: Path) -> None:
    current = tmp_path / accel.digest()
    current.mkdir()
    (current / "manifest.json").write_text(json.dumps({"modules": {"adapters.hl7v2.parser": "missing.so"}}))
    code = "from hub import accel; import adapters.hl7v2.parser as p; print(accel.state().describe(), p.__file__)"
    done = _run(code, MEORING_ACCEL_DIR=str(tmp_path), MEORING_ACCEL="")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pure Python (incomplete build" in done.stdout
    assert done.stdout.strip().endswith("parser.py")


def test_compiled_modules_translate_the_corpus_exactly_like_plain_python() -> None:
    if not (accel.cache_dir() / accel.digest() / "manifest.json").is_file():
        pytest.skip("accelerators not built for these sources (scripts/test builds them: meoring accel build)")
    compiled = _run(_TRANSLATE_ALL, str(ROOT), MEORING_ACCEL="")
    plain = _run(_TRANSLATE_ALL, str(ROOT), MEORING_ACCEL="0")
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    assert plain.returncode == 0, plain.stderr[-2000:]
    fast, slow = json.loads(compiled.stdout), json.loads(plain.stdout)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    assert fast["active"] and fast["parser"].endswith(suffix) and fast["plan"].endswith(suffix)
    assert not slow["active"] and slow["parser"].endswith(".py")
    assert fast["count"] == slow["count"] >= 99
    assert fast["digest"] == slow["digest"], "compiled and plain Python produce different FHIR"
