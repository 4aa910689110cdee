"""Meoring Hub's HL7 v2 → FHIR translation against the LinuxForHealth converter, same messages.

Messages: ORU^R01 with 10 OBX and ADT^A01, each varied into N distinct messages exactly as
``bench/hl7v2_translate.py`` does (its ``variants`` generator over ``mappings/samples/hl7v2``).

* Ours: ``adapters.hl7v2.Hl7v2Translator()`` with its default validation (every resource checked
  as R4), best of R rounds over the N messages in CPU time of this process (one core).
* LinuxForHealth: ``io.github.linuxforhealth:hl7v2-fhir-converter`` from Maven Central, driven by
  ``bench/lfh`` (one Java class): one converter reused, a warm-up of W seconds over the same
  messages, then rounds until S seconds of the converting thread's CPU time; messages per second
  of that thread's CPU time (one core; GC and JIT threads not counted, which favours LFH). Its
  default options (no resource validation); ``--lfh-validate`` adds a run with
  ``withValidateResource()``.

The Java side is built once with Maven (``~/.m2`` as the repository) into
``~/.cache/meoring/lfh/<key>/`` and reused while pom.xml, the class and the version are unchanged.
If the artifact cannot be resolved (no Maven, no Java, no network to Maven Central), the script
says exactly which step failed, still measures ours, and reports the baseline as unavailable.

Usage: ``python bench/hl7v2_lfh_compare.py [--messages N] [--rounds R] [--lfh-version V]
[--warmup W] [--min-seconds S] [--lfh-validate]``.
Last line: ``RESULT translate_oru_r01=<v> msg/s baseline linuxforhealth_oru_r01=<v> msg/s ratio=<x>``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.hl7v2 import Hl7v2Translator
from bench.hl7v2_translate import SAMPLES, variants
from hub import accel

LFH_PROJECT = ROOT / "bench" / "lfh"
CACHE = Path(os.environ.get("MEORING_LFH_CACHE", Path.home() / ".cache" / "meoring" / "lfh"))
ARTIFACT = "io.github.linuxforhealth:hl7v2-fhir-converter"
DEFAULT_VERSION = "1.0.19"  # newest on Maven Central when written (2026-11; released 2022-09)
_LINE = re.compile(r"^lfh (?P<name>\S+) msgs=(?P<msgs>\d+) .*msg_per_s=(?P<rate>[0-9.]+)")


class Unavailable(Exception):
    """The LinuxForHealth side cannot run; the message says which step failed."""


def _run(cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise Unavailable(f"{what}: {cmd[0]!r} is not installed") from None
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what}: timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = " | ".join(line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line)[-600:]
        raise Unavailable(f"{what}: exit {done.returncode}: {tail or (done.stdout + done.stderr)[-600:]}")
    return done


def build(version: str) -> Path:
    """The built bench directory (jar + lib/), building it when the cache has none for this key."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool!r} is not on PATH (needs a JDK 17+ and Maven)")
    digest = hashlib.sha256()
    for path in sorted(LFH_PROJECT.rglob("*")):
        if path.is_file() and "target" not in path.parts:
            digest.update(path.relative_to(LFH_PROJECT).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(version.encode())
    out = CACHE / f"build-{version}-{digest.hexdigest()[:12]}"
    jar = out / "lfh-bench.jar"
    if jar.is_file() and (out / "lib").is_dir():
        return out
    print(f"resolving {ARTIFACT}:{version} from Maven Central (mvn dependency:get) ...", flush=True)
    _run(
        ["mvn", "-B", "-q", "dependency:get", f"-Dartifact={ARTIFACT}:{version}", "-Dtransitive=true"],
        f"mvn dependency:get -Dartifact={ARTIFACT}:{version}",
        1800,
    )
    print(f"building bench/lfh into {out} ...", flush=True)
    _run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(LFH_PROJECT / "pom.xml"),
            "-DskipTests",
            "package",
            f"-Dlfh.version={version}",
            f"-Dlfh.build.dir={out}",
        ],
        "mvn package (bench/lfh)",
        1800,
    )
    if not jar.is_file():
        raise Unavailable(f"mvn package finished but {jar} is missing")
    return out


def run_lfh(built: Path, files: dict[str, Path], warmup: float, min_seconds: float, validate: bool) -> dict[str, float]:
    cmd = [
        "java",
        "-cp",
        f"{built / 'lfh-bench.jar'}{os.pathsep}{built / 'lib' / '*'}",
        "meoring.bench.LfhBench",
        "--warmup",
        str(warmup),
        "--min-seconds",
        str(min_seconds),
    ]
    if validate:
        cmd.append("--validate")
    cmd += [f"{name}={path}" for name, path in files.items()]
    budget = (warmup + min_seconds) * len(files) * (4 if validate else 2) + 300
    done = _run(cmd, "running the LinuxForHealth bench", budget)
    rates: dict[str, float] = {}
    for line in done.stdout.splitlines():
        match = _LINE.match(line)
        if match:
            print(f"  {line}")
            rates[match["name"]] = float(match["rate"])
    missing = set(files) - set(rates)
    if missing:
        raise Unavailable(f"the LinuxForHealth bench printed no rate for {', '.join(sorted(missing))}")
    return rates


def lfh_rates(
    sets: dict[str, list[bytes]], version: str, warmup: float, min_seconds: float, *, validate: bool = False
) -> dict[str, float]:
    """LinuxForHealth's messages/s (one core) per message set; raises :class:`Unavailable`."""
    built = build(version)
    with tempfile.TemporaryDirectory(prefix="meoring-lfh-") as tmp:
        files = {}
        for name, messages in sets.items():
            path = Path(tmp) / f"{name}.hl7"
            path.write_bytes(b"\n".join(m.rstrip(b"\r") for m in messages) + b"\n")
            files[name] = path
        print(
            f"LinuxForHealth {ARTIFACT}:{version}, warm-up {warmup:.0f} s, measured >= {min_seconds:.0f} s "
            f"thread CPU per type{' (withValidateResource)' if validate else ''}:",
            flush=True,
        )
        return run_lfh(built, files, warmup, min_seconds, validate=validate)


def ours(messages: list[bytes], rounds: int) -> float:
    translator = Hl7v2Translator()  # default validation: every resource checked as R4
    for raw in messages:  # warm-up, and proof that every message translates
        translator.translate_raw(raw)
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        start = time.process_time()
        for raw in messages:
            translator.translate_raw(raw)
        best = min(best, time.process_time() - start)
    return len(messages) / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lfh-version", default=DEFAULT_VERSION)
    parser.add_argument("--warmup", type=float, default=15.0, help="LFH warm-up seconds per message type")
    parser.add_argument("--min-seconds", type=float, default=10.0, help="LFH measured thread-CPU seconds per type")
    parser.add_argument("--lfh-validate", action="store_true", help="also run LFH with withValidateResource()")
    args = parser.parse_args()

    sets = {
        "oru_r01": variants((SAMPLES / "oru_r01.hl7").read_bytes(), args.messages, 1),
        "adt_a01": variants((SAMPLES / "adt_a01.hl7").read_bytes(), args.messages, 2),
    }
    print(f"python {sys.version.split()[0]}, {args.messages} distinct messages per type (ORU^R01 with 10 OBX, ADT^A01)")
    print(f"translator modules: {accel.state().describe()}")
    mine = {name: ours(messages, args.rounds) for name, messages in sets.items()}
    for name, rate in mine.items():
        print(f"meoring {name}: {rate:,.0f} msg/s (CPU time, one core, default validation, best of {args.rounds})")

    lfh: dict[str, float] = {}
    lfh_validated: dict[str, float] = {}
    try:
        lfh = lfh_rates(sets, args.lfh_version, args.warmup, args.min_seconds)
        if args.lfh_validate:
            lfh_validated = lfh_rates(sets, args.lfh_version, args.warmup, args.min_seconds, validate=True)
    except Unavailable as exc:
        print(f"SKIP LinuxForHealth baseline: {exc}")

    for name in sets:
        if name in lfh:
            line = (
                f"{name}: meoring {mine[name]:,.0f} msg/s | linuxforhealth {lfh[name]:,.1f} msg/s "
                f"| ratio {mine[name] / lfh[name]:.1f}"
            )
            if name in lfh_validated:
                line += f" | linuxforhealth validated {lfh_validated[name]:,.1f} msg/s"
            print(line)
    if "oru_r01" in lfh:
        print(
            f"RESULT translate_oru_r01={mine['oru_r01']:.0f} msg/s baseline "
            f"linuxforhealth_oru_r01={lfh['oru_r01']:.1f} msg/s ratio={mine['oru_r01'] / lfh['oru_r01']:.1f}"
        )
    else:
        print(
            f"RESULT translate_oru_r01={mine['oru_r01']:.0f} msg/s baseline "
            "linuxforhealth_oru_r01=unavailable msg/s ratio=unavailable"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
