"""HL7 v2 → FHIR translation speed on one core, with R4 validation of every resource.

Messages: ORU^R01 with 10 OBX and ADT^A01 (``mappings/samples/hl7v2``), each varied into N
distinct messages (identifiers, names, values, control ids) so that no cache sees the same
message twice in a row. Baseline from the same run: python-hl7's bare ``hl7.parse`` of the same
messages (decode included). Timing: best of R rounds over all N messages in CPU time of this
process (``time.process_time``: one core, robust to other load on a shared machine), rounds of
ours and of the baseline interleaved so that frequency changes hurt both alike.

Validation is the translator's default, as in the pipeline (``Hl7v2Translator()``: every
resource checked with the verdict of ``validate_resource``, structural work for known element
layouts skipped - :mod:`hub.mapping.fastvalidate`); ``--full-validation`` runs the fhir.resources
R4B models on every resource instead. LinuxForHealth's converter on the same messages:
``bench/hl7v2_lfh_compare.py``.

Compiled accelerators (:mod:`hub.accel`, ``meoring accel build``) are used when built for these
sources, as in the hub's processes; the run then measures the plain-Python translator too, in a
child process with ``MEORING_ACCEL=0``, and prints both.

LinuxForHealth's converter (Maven Central, warm JVM) on the same messages is measured in the same
run too (``bench/hl7v2_lfh_compare.py`` does the building; ``--no-lfh`` skips it; without Java or
Maven it says why and goes on).

Usage: ``python bench/hl7v2_translate.py [--messages N] [--rounds R] [--full-validation] [--no-lfh]``
Last line: ``RESULT translate_oru_r01=<v> msg/s baseline python_hl7_parse=<v> msg/s ratio=<x>``.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hl7

from adapters.hl7v2 import Hl7v2Translator
from hub import accel

SAMPLES = ROOT / "mappings" / "samples" / "hl7v2"


def variants(raw: bytes, count: int, seed: int) -> list[bytes]:
    """``count`` distinct messages from one sample: new control id, MRN, visit, order numbers,
    family name and numeric results."""
    rng = random.Random(seed)
    text = raw.decode("utf-8")
    out = []
    for index in range(count):
        msg = text.replace("LAB000451", f"LAB{index:06d}").replace("ADT0001", f"ADT{index:06d}")
        msg = msg.replace("NW1000234", f"NW{rng.randrange(10**7):07d}")
        msg = msg.replace("VN20250314001", f"VN{rng.randrange(10**9):09d}")
        msg = msg.replace("ORD7781", f"ORD{rng.randrange(10**6):06d}").replace(
            "LAB99120", f"LAB{rng.randrange(10**6):06d}"
        )
        msg = msg.replace("Fictive", rng.choice(["Fictive", "Example", "Sample", "Testperson", "Muster"]))
        lines = []
        for line in msg.split("\r"):
            if line.startswith("OBX|") and "|NM|" in line:
                fields = line.split("|")
                fields[5] = f"{rng.uniform(1, 200):.{rng.choice([0, 1, 2])}f}"
                line = "|".join(fields)
            lines.append(line)
        out.append("\r".join(lines).encode("utf-8"))
    return out


def best_rate(fn: Callable[[], None], count: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return count / best


def measure(name: str, messages: list[bytes], translator: Hl7v2Translator, rounds: int) -> tuple[float, float]:
    texts = [m.decode("utf-8") for m in messages]
    for raw in messages:  # warm-up, and proof that every message translates
        translator.translate_raw(raw)

    def ours() -> None:
        for raw in messages:
            translator.translate_raw(raw)

    def baseline() -> None:
        for raw in messages:
            hl7.parse(raw.decode("utf-8"))

    del texts
    ours_rate = base_rate = 0.0
    for _ in range(rounds):  # interleave
        ours_rate = max(ours_rate, best_rate(ours, len(messages), 1))
        base_rate = max(base_rate, best_rate(baseline, len(messages), 1))
    print(
        f"{name}: translate {ours_rate:,.0f} msg/s | python-hl7 parse {base_rate:,.0f} msg/s "
        f"| ratio {ours_rate / base_rate:.2f}"
    )
    return ours_rate, base_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full-validation", action="store_true", help="validate_resource on every resource")
    parser.add_argument("--no-lfh", action="store_true", help="skip the LinuxForHealth converter baseline")
    args = parser.parse_args()
    translator = Hl7v2Translator(validation="full") if args.full_validation else Hl7v2Translator()
    oru = variants((SAMPLES / "oru_r01.hl7").read_bytes(), args.messages, 1)
    adt = variants((SAMPLES / "adt_a01.hl7").read_bytes(), args.messages, 2)
    mode = "full validate_resource on every resource" if args.full_validation else "default (layout-memo) validation"
    print(f"python {sys.version.split()[0]}, {args.messages} distinct messages each, best of {args.rounds}, {mode}")
    print(f"translator modules: {accel.state().describe()}")
    oru_rate, oru_base = measure("ORU^R01 (10 OBX)", oru, translator, args.rounds)
    adt_rate, _ = measure("ADT^A01", adt, translator, args.rounds)
    if accel.state().active:
        plain = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--no-lfh"],
            env={**os.environ, "MEORING_ACCEL": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
        for line in plain.stdout.splitlines():
            if line.startswith(("ORU^R01", "ADT^A01")):
                print(f"  plain Python, same messages: {line}")
    if not args.no_lfh:
        from bench.hl7v2_lfh_compare import DEFAULT_VERSION, Unavailable, lfh_rates

        try:
            lfh = lfh_rates({"oru_r01": oru, "adt_a01": adt}, DEFAULT_VERSION, warmup=10, min_seconds=8)
        except Unavailable as exc:
            print(f"LinuxForHealth baseline unavailable: {exc}")
        else:
            for name, rate, theirs in (("ORU^R01", oru_rate, lfh["oru_r01"]), ("ADT^A01", adt_rate, lfh["adt_a01"])):
                print(f"{name}: translate {rate:,.0f} msg/s | LinuxForHealth {theirs:,.1f} msg/s "
                      f"| ratio {rate / theirs:.1f}")
    print(
        f"RESULT translate_oru_r01={oru_rate:.0f} msg/s baseline python_hl7_parse={oru_base:.0f} msg/s "
        f"ratio={oru_rate / oru_base:.2f}"
    )


if __name__ == "__main__":
    main()
