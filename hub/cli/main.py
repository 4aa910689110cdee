"""``meoring``: one entry point, one subcommand per job.

Every failure the user can cause or fix ends in one readable line on stderr and a
non-zero exit (1: the job failed, 2: bad usage or configuration); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from hub import __version__
from hub.config import HubSettings, load_settings
from hub.errors import ConfigError, HubError
from hub.logging import configure_logging

log = logging.getLogger("hub.cli")

Command = Callable[[argparse.Namespace, HubSettings], int]


class CliError(Exception):
    """A failure to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- helpers ------------------------------------------------------------------------------
def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is not None:
        from datetime import UTC

        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


# -- commands -----------------------------------------------------------------------------
def cmd_db(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.checks import redact
    from hub.runtime import open_store
    from hub.store.migrate import current_revision, head_revision

    store = open_store(settings, migrate=args.action == "upgrade")
    try:
        current = current_revision(store.engine)
        _print(f"store {redact(settings.store.url)}: revision {current} (latest {head_revision()})")
    finally:
        store.close()
    return 0


def cmd_status(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.runtime import open_store

    store = open_store(settings)
    try:
        stats = store.stats()
    finally:
        store.close()
    states = ("received", "translated", "retrying", "delivered", "dead")
    if args.json:
        _print(json.dumps({
            "messages": {s: stats.inbox_by_status.get(s, 0) for s in states},
            "outbox": stats.outbox_by_status,
            "open_dead_letters": stats.open_dead_letters,
            "oldest_pending": {
                "inbox_id": stats.oldest_pending_inbox_id,
                "received_at": stats.oldest_pending_received_at.isoformat() + "Z"
                if stats.oldest_pending_received_at else None,
            },
        }))
        return 0
    total = sum(stats.inbox_by_status.values())
    _print(f"messages: {total}")
    for state in states:
        _print(f"  {state:<11}{stats.inbox_by_status.get(state, 0):>9}")
    _print(f"open dead letters: {stats.open_dead_letters}")
    if stats.oldest_pending_received_at is not None:
        from hub.store.records import utcnow

        age = utcnow() - stats.oldest_pending_received_at
        _print(f"oldest pending: inbox #{stats.oldest_pending_inbox_id}, received "
               f"{stats.oldest_pending_received_at.isoformat(timespec='seconds')}Z "
               f"({int(age.total_seconds())} s ago)")
    else:
        _print("oldest pending: none")
    return 0


def cmd_doctor(_args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.checks import configured_checks
    from hub.runtime import open_store

    store = None
    problems: list[str] = []
    try:
        store = open_store(settings, migrate=False)
    except HubError as exc:
        problems.append(f"store: {exc}")
    checks = configured_checks(settings, store)
    for check in checks.values():
        problem = check()
        if problem:
            problems.append(problem)
    if store is not None:
        store.close()
    for problem in problems:
        _print(problem)
    if problems:
        return 1
    _print(f"ok: {len(checks)} checks passed ({', '.join(checks)})")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.runtime import open_store, read_messages, translate_on_receipt, translator_for

    # ``mllp.ack_after: translated`` holds for HL7 v2 files too: what cannot be translated is kept
    # as a dead letter and reported here, as the MLLP sender would hear AE.
    translator = translator_for(args.channel, settings) \
        if args.channel == "hl7v2" and settings.mllp.ack_after == "translated" else None
    store = open_store(settings)
    stored = duplicates = untranslatable = 0
    try:
        with store.group_writer(max_batch=settings.store.group_commit_max_batch,
                                max_wait=settings.store.group_commit_max_wait_ms / 1000) as writer:
            for path in args.files:
                for index, message in enumerate(read_messages(args.channel, Path(path), source=args.source), 1):
                    error = None
                    if translator is not None:
                        message, error = translate_on_receipt(translator, message)
                    receipt = writer.receive(message)
                    duplicates += receipt.duplicate
                    stored += not receipt.duplicate
                    if error is not None:
                        untranslatable += 1
                        kept = (f"duplicate of inbox #{receipt.inbox_id}, not stored again" if receipt.duplicate
                                else f"kept as dead letter, inbox #{receipt.inbox_id}")
                        reason = message.rejection.reason if message.rejection is not None else str(error)
                        sys.stderr.write(f"meoring: {path}: message {index} (id {message.message_id or '-'}) "
                                         f"cannot be translated ({kept}): {reason}\n")
    finally:
        store.close()
    _print(f"stored {stored} message(s), {duplicates} duplicate(s) acknowledged without reprocessing")
    if untranslatable:
        sys.stderr.write(f"meoring: {untranslatable} message(s) cannot be translated; see `meoring replay --list`\n")
        return 1
    return 0


def cmd_translate(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.runtime import dry_run

    output = dry_run(args.channel, Path(args.file), settings, explain=args.explain, coverage=args.coverage)
    _print(output)
    return 0


def cmd_replay(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.runtime import open_store

    store = open_store(settings)
    try:
        if args.list:
            letters = store.replay.dead_letters(limit=args.limit)
            for letter in letters:
                _print(f"#{letter.dead_letter_id} inbox={letter.inbox_id} stage={letter.stage} "
                       f"at={letter.created_at.isoformat(timespec='seconds')}Z {letter.reason}")
            _print(f"{len(letters)} open dead letter(s)")
            return 0
        if args.since or args.until:
            if not (args.since and args.until):
                raise CliError("--since and --until go together", code=2)
            count = store.replay.replay_range(args.since, args.until, channel=args.channel)
            _print(f"re-queued {count} message(s) received in [{args.since.isoformat()}, {args.until.isoformat()})")
            return 0
        count = store.replay.replay_dead(args.id or None)
        _print(f"re-queued {count} dead letter(s)")
        return 0
    finally:
        store.close()


def cmd_worker(args: argparse.Namespace, settings: HubSettings) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from hub.metrics import PipelineMetrics
    from hub.runtime import build_worker, fhir_client, open_store

    store = open_store(settings)
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=settings.http.host, registry=registry)
    client = fhir_client(settings)
    worker = build_worker(settings, store, client, metrics)
    stop = threading.Event()
    _install_signal_handlers(stop)
    log.info("worker started", extra={"event": "worker_started"})
    try:
        totals = worker.run(stop, until_idle=args.until_idle)
    finally:
        worker.close()
        client.close()
        store.close()
    if args.until_idle:
        _print(f"translated {totals.translated}, rejected {totals.rejected}, delivered {totals.delivered}, "
               f"retrying {totals.retried}, dead {totals.dead}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.serve import serve

    return serve(settings, worker=args.worker, mllp=args.mllp)


def cmd_mllp(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.serve import serve_mllp

    return serve_mllp(settings)


def cmd_quickstart(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.quickstart import run_quickstart

    if not args.verbose:
        # A person is watching: a summary, not a JSON line per delivered message.
        configure_logging("WARNING", json_format=False)
    return run_quickstart(settings, samples=[Path(p) for p in args.samples] if args.samples else None)


def cmd_mappings(args: argparse.Namespace, settings: HubSettings) -> int:
    from hub.runtime import validate_mappings

    problems = validate_mappings(Path(args.directory) if args.directory else None)
    for problem in problems:
        _print(problem)
    if problems:
        return 1
    _print("mappings: no problems found")
    return 0


def cmd_accel(args: argparse.Namespace, _settings: HubSettings) -> int:
    from hub import accel

    if args.action == "build":
        try:
            where = accel.build(force=args.force)
        except accel.AccelBuildError as exc:
            raise CliError(f"accelerators not built: {exc}") from None
        _print(f"accelerators built: {where} (used by processes started from now on)")
        return 0
    _print(accel.state().describe())
    return 0


def _install_signal_handlers(stop: threading.Event) -> None:
    import signal

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meoring", description="Meoring Hub: clinical feeds into FHIR R4.")
    parser.add_argument("--version", action="version", version=f"meoring {__version__}")
    parser.add_argument("-c", "--config", help="YAML config file (default: $MEORING_CONFIG or embedded defaults)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "run the HTTP app (health, metrics, CDS Hooks) with worker and MLLP listener")
    p.add_argument("--no-worker", dest="worker", action="store_false", help="do not run the pipeline worker")
    p.add_argument("--no-mllp", dest="mllp", action="store_false", help="do not run the MLLP listener")
    p = add("worker", cmd_worker, "run the pipeline worker: translate and deliver inbox messages")
    p.add_argument("--until-idle", action="store_true", help="stop when nothing is left to do now")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port")
    add("mllp", cmd_mllp, "run the HL7 v2 MLLP listener")
    p = add("ingest", cmd_ingest, "store message files in the inbox (HL7 v2 batches are split)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--channel", default="hl7v2", help="hl7v2 (default) or fhir")
    p.add_argument("--source", default=None, help="sender name (default: from the message, e.g. MSH-4|MSH-3)")
    p = add("translate", cmd_translate, "dry run: print the FHIR Bundle a message becomes (write-if-absent "
            "entries as POST + ifNoneExist; delivery turns them into PUT or drops them)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--channel", default="hl7v2")
    p.add_argument("--explain", action="store_true", help="show the rule and source field behind each element")
    p.add_argument("--coverage", action="store_true", help="list source fields the mapping did not use")
    p = add("replay", cmd_replay, "re-deliver dead letters (default: all open ones) or a time range")
    p.add_argument("--list", action="store_true", help="list open dead letters instead")
    p.add_argument("--id", type=int, action="append", help="replay this dead letter id (repeatable)")
    p.add_argument("--since", type=_parse_time, help="replay messages received at or after (ISO 8601, UTC)")
    p.add_argument("--until", type=_parse_time, help="… and before this time")
    p.add_argument("--channel", help="restrict a time-range replay to one channel")
    p.add_argument("--limit", type=int, default=100)
    p = add("status", cmd_status, "message counts by state and the oldest pending message")
    p.add_argument("--json", action="store_true")
    add("doctor", cmd_doctor, "check every configured endpoint; one line per problem")
    p = add("db", cmd_db, "database schema: upgrade (apply migrations) or current")
    p.add_argument("action", choices=["upgrade", "current"])
    p = add("quickstart", cmd_quickstart, "the main job on embedded defaults: replay the sample feeds into FHIR")
    p.add_argument("samples", nargs="*", metavar="FILE", help="message files (default: bundled samples)")
    from hub.openemr.cli import add_openemr_commands

    add_openemr_commands(sub)
    p = add("accel", cmd_accel, "compiled accelerators for translation: build, or status (in use or not, and why)")
    p.add_argument("action", choices=["build", "status"])
    p.add_argument("--force", action="store_true", help="rebuild even if a build for these sources exists")
    p = add("mappings", cmd_mappings, "mapping files: validate")
    p.add_argument("action", choices=["validate"])
    p.add_argument("directory", nargs="?", help="mapping directory (default: the configured one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging("DEBUG" if args.verbose else settings.logging.level,
                          json_format=settings.logging.json_format,
                          salt=settings.logging.identifier_salt.get_secret_value())
        func: Command = args.func
        return func(args, settings)
    except ConfigError as exc:
        sys.stderr.write(f"meoring: {exc}\n")
        return 2
    except CliError as exc:
        sys.stderr.write(f"meoring: {exc}\n")
        return exc.code
    except HubError as exc:
        sys.stderr.write(f"meoring: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"meoring: {exc.strerror or type(exc).__name__}{where}\n")
        return 1
    except Exception as exc:
        log.error("unexpected error", exc_info=exc, extra={"event": "cli_crashed"})
        if args.verbose:
            # Asked for by the operator: the traceback may quote data, so only with -v.
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"meoring: unexpected {type(exc).__name__} (run with -v for the traceback)\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
