"""The HL7 v2 adapter as the hub runs it: the receiver behind the MLLP listener, file
ingest, and the factories :mod:`hub.runtime` calls.

Receipt rule (HL7 v2.5.1 Ch. 2.9.2, original mode): an ``AA`` is sent only after the raw
message is committed to the inbox. What cannot be parsed or is not supported gets an
``AR``/``AE`` with an ERR segment naming the field and is not stored; a message that
cannot be stored gets ``AE`` 207 so the sender sends it again. A repeated MSH-10 from the
same sender is acknowledged again without being processed twice. In enhanced mode
(MSH-15 valued) a commit ACK (``CA``/``CE``/``CR``) is sent as MSH-15 asks.

With ``mllp.ack_after: translated`` the message is also translated before it is acknowledged.
One that cannot become FHIR is still committed - as a dead letter with the reason, in the same
group commit - and only then answered ``AE`` with an ERR segment (0357 code, ERR-2 location,
ERR-8 text). In enhanced mode that is an application-level answer, so MSH-16 decides: ``AL``/``ER``
(or empty) get the ``AE`` on this connection (the hub has no way to send a separate application
ACK later); ``NE``/``SU`` mean the sender does not want application errors, so it gets the commit
answer MSH-15 asks for - ``CA``, since the message is safely stored. The translation is not kept:
the worker translates a stored message again, with the inbox id its Provenance points at.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from hub.config import HubSettings
from hub.errors import HubError, MappingError, UnsupportedMessage
from hub.pipeline.translator import translation_error
from hub.pipeline.worker import rejection_for
from hub.store import GroupCommitWriter, IncomingMessage, Store
from hub.store.records import utcnow

from .ack import AckCode, ack_for_error, build_ack, should_send_ack
from .batch import split_batch
from .mllp import MllpListener
from .parser import Header, Message, parse, peek_header
from .structure import resolve_structure
from .translator import CHANNEL, Hl7v2Translator, default_translator

log = logging.getLogger("adapters.hl7v2")

SUPPORTED_VERSIONS = ("2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8")
SUPPORTED_PROCESSING_IDS = ("P", "T", "D")
#: Threads translating on receipt (``ack_after: translated``); 0 translates on the event loop.
TRANSLATE_THREADS = 0


def translator_from_settings(_settings: HubSettings) -> Hl7v2Translator:
    """The translator :mod:`hub.runtime` registers for channel ``hl7v2`` (shipped maps + site layer)."""
    return default_translator()


def source_of(header: Header) -> str:
    """The sender's identity for de-duplication: MSH-4 facility and MSH-3 application."""
    return f"{header.sending_facility}|{header.sending_application}"


def read_hl7v2_file(path: Path, *, source: str | None = None) -> list[IncomingMessage]:
    """A file of one message or an FHS/BHS batch, as inbox messages keyed by MSH-10."""
    messages = []
    for index, raw in enumerate(split_batch(path.read_bytes())):
        header = peek_header(raw)
        if header is None:
            raise HubError(f"{path.name}: message {index + 1} has no readable MSH segment")
        messages.append(
            IncomingMessage(
                channel=CHANNEL,
                source=source or source_of(header),
                payload=raw,
                message_id=header.control_id or None,
                content_type="x-application/hl7-v2+er7",
            )
        )
    return messages


class Hl7v2Receiver:
    """The :class:`~adapters.hl7v2.mllp.FrameHandler` for HL7 v2 over MLLP.

    ``ack_after="translated"`` translates each message before answering (needs ``translator``);
    ``translate_threads`` > 0 runs those translations on a pool of that many threads instead of
    the event loop (0: on the loop). ``on_rejected`` is called for each newly stored message that
    did not translate. Call :meth:`close` when done.
    """

    def __init__(self, writer: GroupCommitWriter, translator: Hl7v2Translator | None = None, *,
                 on_stored: Callable[[], None] | None = None,
                 ack_after: Literal["stored", "translated"] = "stored",
                 translate_threads: int = 0,
                 on_rejected: Callable[[], None] | None = None) -> None:
        if ack_after not in ("stored", "translated"):
            raise ValueError("ack_after must be 'stored' or 'translated'")
        if ack_after == "translated" and translator is None:
            raise ValueError("ack_after='translated' needs a translator")
        self._writer = writer
        self._translator = translator
        self._on_stored = on_stored
        self._on_rejected = on_rejected
        self.ack_after = ack_after
        self._pool = (ThreadPoolExecutor(translate_threads, thread_name_prefix="hl7v2-translate")
                      if ack_after == "translated" and translate_threads > 0 else None)
        self.accepted = 0
        self.rejected = 0
        self.duplicates = 0
        self.untranslatable = 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def check(self, raw: bytes) -> Header:
        """Parse and check what can be checked before storing; raises MappingError."""
        return self._check(parse(raw).header)

    def _check(self, header: Header) -> Header:
        if header.version and not header.version.startswith(SUPPORTED_VERSIONS):
            raise MappingError(
                "MSH-12 version is not supported (2.1 to 2.8 are)",
                location="MSH-12",
                code="unsupported_version",
            )
        if header.processing_id and header.processing_id[:1] not in SUPPORTED_PROCESSING_IDS:
            raise MappingError(
                "MSH-11 processing id must be P, T or D", location="MSH-11", code="unsupported_processing_id"
            )
        if not header.control_id:
            raise MappingError("MSH-10 message control id is empty", location="MSH-10", code="required")
        if self._translator is not None:
            structure = resolve_structure(header, self._translator.repository.structures)
            if self._translator.repository.message_for(structure, header.trigger_event) is None:
                raise UnsupportedMessage("no mapping for this message type", location="MSH-9")
        return header

    async def handle(self, payload: bytes, peer: str) -> bytes | None:
        try:
            parsed = parse(payload)
            header = self._check(parsed.header)
        except MappingError as exc:
            self.rejected += 1
            log.warning(
                "hl7v2 message refused",
                extra={"event": "hl7v2_refused", "peer": peer, "location": exc.location, "reason": str(exc)},
            )
            peeked = peek_header(payload)
            enhanced = peeked is not None and peeked.enhanced_mode
            if enhanced and not should_send_ack(peeked.accept_ack_type if peeked else None, success=False):
                return None
            return ack_for_error(payload, exc, header=peeked, accept_level=enhanced)
        failure: MappingError | None = None
        if self.ack_after == "translated":
            failure = await self._translate(parsed)
        message = IncomingMessage(
            channel=CHANNEL,
            source=source_of(header),
            payload=payload,
            message_id=header.control_id,
            content_type="x-application/hl7-v2+er7",
            rejection=rejection_for(failure) if failure is not None else None,
        )
        try:
            receipt = await self._writer.receive_async(message)
        except Exception as exc:  # noqa: BLE001 - the sender must hear that we do not have it
            log.error(
                "inbox write failed",
                extra={"event": "inbox_write_failed", "peer": peer, "error": type(exc).__name__},
            )
            error = HubError("the message could not be stored; send it again")
            code = AckCode.CE if header.enhanced_mode else AckCode.AE
            return build_ack(header, code, error=error)
        if receipt.duplicate:
            self.duplicates += 1
        else:
            self.accepted += 1
            if self._on_stored is not None:
                self._on_stored()
        if failure is not None:
            if not receipt.duplicate:
                self.untranslatable += 1
                if self._on_rejected is not None:
                    self._on_rejected()
            log.warning(
                "hl7v2 message stored as a dead letter: it cannot be translated",
                extra={
                    "event": "hl7v2_untranslatable",
                    "inbox_id": receipt.inbox_id,
                    "control_id": header.control_id,
                    "duplicate": receipt.duplicate,
                    "location": failure.location,
                    "reason": str(failure),
                },
            )
            return self._untranslatable_ack(payload, header, failure)
        log.info(
            "hl7v2 message stored",
            extra={
                "event": "hl7v2_stored",
                "inbox_id": receipt.inbox_id,
                "control_id": header.control_id,
                "duplicate": receipt.duplicate,
            },
        )
        if header.enhanced_mode:
            if not should_send_ack(header.accept_ack_type, success=True):
                return None
            return build_ack(header, AckCode.CA)
        return build_ack(header, AckCode.AA)

    async def _translate(self, parsed: Message) -> MappingError | None:
        """The reason ``parsed`` cannot become FHIR, or None when it translates."""
        if self._pool is None:
            return self._translation_error(parsed)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._translation_error, parsed)

    def _translation_error(self, parsed: Message) -> MappingError | None:
        translator = self._translator
        assert translator is not None
        return translation_error(lambda: translator.translate_message(parsed, received_at=utcnow()))

    @staticmethod
    def _untranslatable_ack(payload: bytes, header: Header, error: MappingError) -> bytes | None:
        """The answer for a message stored as a dead letter because it cannot be translated."""
        if not header.enhanced_mode:
            return ack_for_error(payload, error, header=header)
        if should_send_ack(header.application_ack_type, success=False):
            return ack_for_error(payload, error, header=header, accept_level=False)
        # MSH-16 NE/SU: no application errors wanted; the commit itself succeeded.
        if not should_send_ack(header.accept_ack_type, success=True):
            return None
        return build_ack(header, AckCode.CA)

    async def reject_oversized(self, head: bytes, limit: int, peer: str) -> bytes | None:
        self.rejected += 1
        log.warning("hl7v2 message too large", extra={"event": "hl7v2_oversized", "peer": peer, "limit": limit})
        error = MappingError(f"message exceeds the {limit}-byte limit", code="internal")
        header = peek_header(head)
        return ack_for_error(head, error, header=header, accept_level=header is not None and header.enhanced_mode)


def _ssl_context(settings: HubSettings) -> ssl.SSLContext | None:
    mllp = settings.mllp
    if mllp.tls_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(mllp.tls_certfile), str(mllp.tls_keyfile) if mllp.tls_keyfile else None)
    return context


def build_receiver(settings: HubSettings, writer: GroupCommitWriter, *,
                   on_stored: Callable[[], None] | None = None,
                   on_rejected: Callable[[], None] | None = None) -> Hl7v2Receiver:
    return Hl7v2Receiver(writer, default_translator(), on_stored=on_stored, on_rejected=on_rejected,
                         ack_after=settings.mllp.ack_after, translate_threads=TRANSLATE_THREADS)


def build_listener(settings: HubSettings, receiver: Hl7v2Receiver) -> MllpListener:
    return MllpListener(
        settings.mllp.host,
        settings.mllp.port,
        handler=receiver,
        max_message_bytes=settings.mllp.max_message_bytes,
        idle_timeout_s=settings.mllp.idle_timeout_s,
        ssl_context=_ssl_context(settings),
    )


async def _serve(settings: HubSettings, store: Store, stop: threading.Event | None,
                 on_stored: Callable[[], None] | None = None,
                 on_rejected: Callable[[], None] | None = None) -> None:
    with store.group_writer(
        max_batch=settings.store.group_commit_max_batch,
        max_wait=settings.store.group_commit_max_wait_ms / 1000,
    ) as writer:
        receiver = build_receiver(settings, writer, on_stored=on_stored, on_rejected=on_rejected)
        listener = build_listener(settings, receiver)
        await listener.start()
        try:
            if stop is None:
                await listener.serve_forever()
            else:
                while not stop.is_set():
                    await asyncio.sleep(0.2)
        finally:
            await listener.close()
            receiver.close()


def run_mllp(settings: HubSettings, store: Store) -> int:
    """Run the listener in the foreground until interrupted (``meoring mllp``)."""
    try:
        asyncio.run(_serve(settings, store, None))
    except KeyboardInterrupt:
        pass
    return 0


def run_mllp_in_thread(settings: HubSettings, store: Store, stop: threading.Event,
                       on_stored: Callable[[], None] | None = None,
                       on_rejected: Callable[[], None] | None = None) -> threading.Thread:
    """The listener on its own event loop in a thread (``meoring serve``); ends when ``stop`` is set.

    ``on_stored`` is called for each newly stored message (the hub's received-messages counter),
    ``on_rejected`` for each one stored as a dead letter because it did not translate on receipt.
    """
    return threading.Thread(target=lambda: asyncio.run(_serve(settings, store, stop, on_stored, on_rejected)),
                            name="mllp", daemon=True)
