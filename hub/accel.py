"""Compiled accelerators for the translation hot path (mypyc), used only when they match the source.

The HL7 v2 parser and source nodes and the mapping engine's runtime run about 1.7 times faster
compiled with mypyc (``bench/hl7v2_translate.py`` prints both figures). They are ordinary typed
Python modules; ``meoring accel build`` compiles them into a cache directory outside the source
tree, keyed by a digest of the sources they were built from and of the Python ABI. At import time
:func:`install` looks for the build matching the sources on disk now and, when there is one, puts
a finder in front of the import system that loads those modules from it.

Why a keyed cache rather than ``.so`` files beside the sources: a compiled module sitting next to
its ``.py`` silently shadows every later edit of it. Here an edit changes the digest, the old
build no longer matches and the plain Python is used until the next build: never stale code.

``meoring accel build`` / ``meoring accel status``. ``MEORING_ACCEL=0`` turns the accelerators
off; ``MEORING_ACCEL_DIR`` moves the cache (default ``$MEORING_CACHE/accel`` or
``~/.cache/meoring/accel``).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = ["COMPILED_MODULES", "AccelBuildError", "AccelState", "build", "digest", "install", "state"]

#: What is compiled: the modules every translated message runs through.
COMPILED_MODULES: tuple[str, ...] = (
    "adapters.hl7v2.charset",
    "adapters.hl7v2.escape",
    "adapters.hl7v2.functions",
    "adapters.hl7v2.parser",
    "adapters.hl7v2.source",
    "adapters.hl7v2.structure",
    "hub.mapping.bundle",
    "hub.mapping.conceptmap",
    "hub.mapping.fastvalidate",
    "hub.mapping.identity",
    "hub.mapping.plan",
    "hub.mapping.runtime",
    "hub.mapping.target",
)

#: What the digest covers: the compiled modules and the modules of ours they import, whose types
#: the compiler relied on (a change to any of these retires the build).
_DIGEST_FILES = (
    *(name.replace(".", "/") + ".py" for name in COMPILED_MODULES),
    "hub/errors.py",
    "hub/fhir/validation.py",
    "hub/mapping/model.py",
    "hub/mapping/source.py",
    "hub/accel.py",
)

_MANIFEST = "manifest.json"
_ROOT = Path(__file__).resolve().parents[1]  # the directory holding hub/ and adapters/


class AccelBuildError(Exception):
    """The compiler failed (its last lines say why) or is not installed."""


@dataclass(frozen=True)
class AccelState:
    """Whether the compiled modules are in use, and why not."""

    active: bool
    reason: str
    directory: Path | None = None

    def describe(self) -> str:
        return f"compiled (mypyc, {self.directory})" if self.active else f"pure Python ({self.reason})"


_state = AccelState(False, "not looked for yet")


def cache_dir() -> Path:
    explicit = os.environ.get("MEORING_ACCEL_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("MEORING_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "meoring") / "accel"


def digest(root: Path = _ROOT) -> str:
    """Digest of the sources a build is valid for, and of this interpreter's extension ABI."""
    h = hashlib.sha256()
    h.update(sys.implementation.cache_tag.encode())
    h.update(importlib.machinery.EXTENSION_SUFFIXES[0].encode())
    for name in _DIGEST_FILES:
        h.update(name.encode() + b"\0")
        h.update((root / name).read_bytes() + b"\0")
    return h.hexdigest()[:24]


class _CompiledFinder(importlib.abc.MetaPathFinder):
    """Serves the compiled modules (and mypyc's shared library) from one build directory."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def install(root: Path = _ROOT) -> AccelState:
    """Use the compiled modules if a build matches the sources now on disk (idempotent)."""
    global _state
    if any(isinstance(f, _CompiledFinder) for f in sys.meta_path):
        return _state
    if os.environ.get("MEORING_ACCEL", "").strip().lower() in ("0", "off", "false", "no"):
        _state = AccelState(False, "turned off by MEORING_ACCEL")
        return _state
    already = [name for name in COMPILED_MODULES if name in sys.modules]
    if already:
        _state = AccelState(False, f"{already[0]} was imported before the accelerators")
        return _state
    try:
        directory = cache_dir() / digest(root)
        manifest = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
        files = {name: directory / file for name, file in manifest["modules"].items()}
    except FileNotFoundError:
        _state = AccelState(False, "not built for these sources: run 'meoring accel build'")
        return _state
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _state = AccelState(False, f"unreadable build ({type(exc).__name__})")
        return _state
    if not all(path.is_file() for path in files.values()):
        _state = AccelState(False, "incomplete build: run 'meoring accel build'")
        return _state
    sys.meta_path.insert(0, _CompiledFinder(files))
    _state = AccelState(True, "", directory)
    return _state


def state() -> AccelState:
    return _state


def build(root: Path = _ROOT, *, force: bool = False) -> Path:
    """Compile :data:`COMPILED_MODULES` into ``cache_dir()/<digest>``; returns that directory.

    The sources are copied to a scratch directory first (mypyc writes its output beside what it
    compiles); the result is moved into place in one rename, so a crash leaves no half build.
    """
    key = digest(root)
    target = cache_dir() / key
    if (target / _MANIFEST).is_file() and not force:
        return target
    if importlib.util.find_spec("mypyc") is None:
        raise AccelBuildError("mypyc is not installed (pip install mypy)")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    with tempfile.TemporaryDirectory(prefix="meoring-accel-") as scratch:
        work = Path(scratch)
        for package in ("hub", "adapters", "mappings"):
            shutil.copytree(
                root / package, work / package, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
            )
        sources = [name.replace(".", "/") + ".py" for name in COMPILED_MODULES]
        done = subprocess.run(  # the compiler is a trusted dev tool run on our own sources
            [sys.executable, "-m", "mypyc", *sources],
            cwd=work,
            capture_output=True,
            text=True,
            env={**os.environ, "MYPYC_OPT_LEVEL": os.environ.get("MYPYC_OPT_LEVEL", "3")},
            check=False,
        )
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise AccelBuildError(f"mypyc failed: {tail}")
        staging = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=_ensure(cache_dir())))
        files: dict[str, str] = {}
        for name, source in zip(COMPILED_MODULES, sources, strict=True):
            built = work / (source[: -len(".py")] + suffix)
            if not built.is_file():
                raise AccelBuildError(f"mypyc left no extension for {name}")
            files[name] = f"{name}{suffix}"
            shutil.copy2(built, staging / files[name])
        for shared in work.glob(f"*__mypyc{suffix}"):  # the group's runtime library
            files[shared.name[: -len(suffix)]] = shared.name
            shutil.copy2(shared, staging / shared.name)
        (staging / _MANIFEST).write_text(json.dumps({"modules": files, "digest": key}, indent=1), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
