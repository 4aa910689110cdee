"""Composition root: build the store, FHIR client, translators and worker from settings.

This is the one place that knows which adapter serves which channel; the pipeline itself
only sees the :class:`~hub.pipeline.translator.Translator` protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx

from hub.config import HubSettings
from hub.errors import HubError, MappingError
from hub.fhir.client import FhirClient
from hub.fhir.retry import RetryPolicy
from hub.metrics import PipelineMetrics
from hub.pipeline.delivery import Deliverer, FhirBundleDeliverer
from hub.pipeline.fhir_passthrough import FhirBundlePassthrough
from hub.pipeline.translator import InboundMessage, Translator, translation_error
from hub.pipeline.worker import PipelineWorker, rejection_for
from hub.store import IncomingMessage, Store
from hub.store.records import utcnow

log = logging.getLogger("hub.runtime")

# channel -> "module:factory"; a factory takes the settings and returns a Translator.
ADAPTER_TRANSLATORS: dict[str, str] = {
    "hl7v2": "adapters.hl7v2.service:translator_from_settings",
}


def open_store(settings: HubSettings, *, migrate: bool = True) -> Store:
    return Store.open(settings.store.url, migrate=migrate, sqlite_synchronous=settings.store.sqlite_synchronous)


def fhir_client(settings: HubSettings) -> FhirClient:
    fhir = settings.fhir
    headers = {}
    if fhir.bearer_token is not None:
        headers["Authorization"] = f"Bearer {fhir.bearer_token.get_secret_value()}"
    return FhirClient(
        fhir.base_url,
        timeout=httpx.Timeout(fhir.timeout_s, connect=fhir.connect_timeout_s),
        retry=RetryPolicy(max_attempts=fhir.max_attempts),
        validate=fhir.validate_outgoing,
        headers=headers,
    )


def translator_for(channel: str, settings: HubSettings) -> Translator:
    """The translator of one channel, importing only its adapter."""
    if channel == "fhir":
        return FhirBundlePassthrough()
    target = ADAPTER_TRANSLATORS.get(channel)
    if target is None:
        known = ", ".join(["fhir", *ADAPTER_TRANSLATORS])
        raise HubError(f"unknown channel {channel!r} (known: {known})")
    module_name, _, factory_name = target.partition(":")
    factory: Callable[[HubSettings], Translator] = getattr(importlib.import_module(module_name), factory_name)
    return factory(settings)


def translators(settings: HubSettings) -> dict[str, Translator]:
    """Every channel's translator, for the worker."""
    return {channel: translator_for(channel, settings) for channel in ["fhir", *ADAPTER_TRANSLATORS]}


def build_worker(settings: HubSettings, store: Store, client: FhirClient,
                 metrics: PipelineMetrics | None = None) -> PipelineWorker:
    deliverers: dict[str, Deliverer] = {"fhir": FhirBundleDeliverer(client)}
    if settings.openemr.base_url:
        from hub.openemr.integration import openemr_deliverers

        deliverers.update(openemr_deliverers(settings, store))
    return PipelineWorker(
        store,
        translators=translators(settings),
        deliverers=deliverers,
        settings=settings.pipeline,
        metrics=metrics,
    )


# channel -> "module:function(path, source) -> list[IncomingMessage]" for `meoring ingest`.
ADAPTER_FILE_READERS: dict[str, str] = {
    "hl7v2": "adapters.hl7v2.service:read_hl7v2_file",
}


def read_messages(channel: str, path: Path, *, source: str | None = None) -> list[IncomingMessage]:
    """Split a file into inbox messages for ``channel``."""
    if channel == "fhir":
        return read_fhir_file(path, source=source)
    target = ADAPTER_FILE_READERS.get(channel)
    if target is None:
        raise HubError(f"unknown channel {channel!r} (known: fhir, {', '.join(ADAPTER_FILE_READERS)})")
    module_name, _, function_name = target.partition(":")
    reader: Callable[..., list[IncomingMessage]] = getattr(importlib.import_module(module_name), function_name)
    return reader(path, source=source)


def translate_on_receipt(translator: Translator,
                         message: IncomingMessage) -> tuple[IncomingMessage, MappingError | None]:
    """Translate ``message`` before storing it (``mllp.ack_after: translated``).

    Returns the message to store and, when it cannot become FHIR, the error: the message then
    carries a rejection and is stored as a dead letter with the reason. The translation itself
    is thrown away; the worker translates the stored message again with its inbox id.
    """
    inbound = InboundMessage(inbox_id=0, channel=message.channel, source=message.source, payload=message.payload,
                             received_at=message.received_at or utcnow(), message_id=message.message_id,
                             content_type=message.content_type)
    error = translation_error(lambda: translator.translate(inbound))
    if error is None:
        return message, None
    return dataclasses.replace(message, rejection=rejection_for(error)), error


def read_fhir_file(path: Path, *, source: str | None = None) -> list[IncomingMessage]:
    """A ``.json`` file is one message; a ``.ndjson`` file one message per line.

    Without a sender-assigned id, the content hash is the message id: the same bytes
    from the same source are the same message.
    """
    raw = path.read_bytes()
    chunks = [line for line in raw.splitlines() if line.strip()] if path.suffix == ".ndjson" else [raw]
    sender = source or f"file:{path.name}"
    return [
        IncomingMessage(channel="fhir", source=sender, payload=chunk, content_type="application/fhir+json",
                        message_id=hashlib.sha256(chunk).hexdigest())
        for chunk in chunks
    ]


def dry_run(channel: str, path: Path, settings: HubSettings, *, explain: bool = False,
            coverage: bool = False) -> str:
    """Translate every message in ``path`` without storing or delivering anything."""
    translator = translator_for(channel, settings)
    outputs: list[str] = []
    for index, message in enumerate(read_messages(channel, path)):
        inbound = InboundMessage(inbox_id=0, channel=channel, source=message.source, payload=message.payload,
                                 received_at=utcnow(), message_id=message.message_id,
                                 content_type=message.content_type)
        explainer = getattr(translator, "explain_lines", None)
        if explain and callable(explainer):
            outputs.extend(str(line) for line in explainer(inbound))
            continue
        translation = translator.translate(inbound)
        outputs.append(json.dumps(translation.bundle, indent=2, ensure_ascii=False))
        if coverage:
            unused = ", ".join(translation.unconsumed) or "none"
            outputs.append(f"# message {index + 1}: fields not used by the mapping: {unused}")
        for warning in translation.warnings:
            outputs.append(f"# warning: {warning}")
    return "\n".join(outputs)


# channel -> "module:function(directory) -> list[problem]" for `meoring mappings validate`.
ADAPTER_MAPPING_VALIDATORS: dict[str, str] = {
    "hl7v2": "adapters.hl7v2.validation:validate_mappings",
}


def validate_mappings(directory: Path | None = None, *, channel: str = "hl7v2") -> list[str]:
    """Problems in the mapping files (each names file and line); empty when all is well."""
    target = ADAPTER_MAPPING_VALIDATORS.get(channel)
    if target is None:
        raise HubError(f"no mapping files for channel {channel!r}")
    module_name, _, function_name = target.partition(":")
    check: Callable[..., list[object]] = getattr(importlib.import_module(module_name), function_name)
    return [str(problem) for problem in check(directory or default_mappings_dir())]


def default_mappings_dir() -> Path:
    import mappings

    return Path(mappings.__file__).parent
