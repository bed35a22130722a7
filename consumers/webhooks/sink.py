"""The webhooks sink: signed ``product.created`` / ``updated`` / ``deleted`` events.

Guarantees (with :mod:`consumers.runtime`: offsets are committed after ``flush``):

* **Durable before the commit.** ``flush()`` turns the batch into one event per record
  and subscriber and writes them, in one SQLite transaction, into the per-subscriber
  outbox of the state file (:mod:`consumers.webhooks.outbox`); only then does it
  return, so a committed offset never loses an event.  ``flush`` does not wait for
  any subscriber: a subscriber that is down or slow never holds the others back.
* **At-least-once, in order per product per subscriber.** One delivery thread per
  subscriber (started by ``open``, stopped by ``close``) works the outbox; an event of
  a product is attempted only when that product's earlier events to that subscriber
  were delivered or dead-lettered.  A crash between a 2xx and its record in the state
  file resends the event with the *same* ``X-Webhook-ID``: receivers deduplicate.
* **Retries with capped exponential backoff, up to ``max_age``.** Timeouts,
  connection errors, 408, 429 (``Retry-After`` honoured) and 5xx are retried
  (``backoff_initial`` doubling to ``backoff_max``, with jitter); repeated failures
  also hold the whole subscriber back by the same schedule (it is probably down).
  Any other answer (4xx, 3xx) is a permanent refusal.  Refused events, and events
  not delivered within ``max_age`` of being queued, are dead letters: recorded in the
  state file and handed to the runtime through :meth:`WebhooksSink.dead_letters`.
* **created vs updated.** The state file remembers, per subscriber and product, what
  was queued last: the first event of a product (or the first after a delete) is
  ``product.created``, the next ones ``product.updated``; a record whose ``version`` is
  not newer than the last one queued (a redelivered batch) sends nothing; an update
  whose payload equals the last one queued sends nothing.  A delete is sent as
  ``product.deleted`` even for a product this subscriber was never told about (it may
  have it from a full sync; deleting is idempotent), but not twice in a row.

Options (``--option key=value``): ``config`` (subscribers file, default
``webhooks.toml``), ``max_age`` (default ``24h``), ``state`` (default
``.catalog-cdc/webhooks.sqlite``), ``backoff_initial`` (default ``1s``),
``backoff_max`` (default ``5m``).
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from consumers.contract import Record, Rejected, TransientSinkError
from consumers.registry import SinkContext
from consumers.toolkit.headers import retry_after as retry_after_seconds
from consumers.webhooks import events
from consumers.webhooks.config import Subscriber, load_subscribers, parse_duration
from consumers.webhooks.outbox import Entry, Known, Outbox, Queued
from pipeline.codec.jsontext import json_dumps as _json_dumps
from pipeline.documents.model import ProductDocument

log = logging.getLogger(__name__)

__all__ = ["WebhooksSink", "backoff_delay", "classify", "retry_after_seconds"]

DEFAULT_MAX_AGE = 24 * 3600.0
DEFAULT_STATE = ".catalog-cdc/webhooks.sqlite"
DEFAULT_BACKOFF_INITIAL = 1.0
DEFAULT_BACKOFF_MAX = 300.0
IDLE_WAIT = 0.5
"""Longest a delivery thread sleeps before it looks at the outbox again."""


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """Delay before retry number ``attempt`` (1, 2, ...): ``initial * 2**(attempt-1)``,
    capped at ``maximum`` (no jitter; :func:`_jittered` adds it)."""
    if attempt < 1:
        return 0.0
    return min(maximum, initial * 2.0 ** min(attempt - 1, 62))


def _jittered(delay: float, maximum: float) -> float:
    return min(maximum, delay * random.uniform(0.8, 1.2))


def classify(status: int) -> str:
    """``"ok"`` (2xx), ``"retry"`` (408, 429, 5xx) or ``"refused"`` (anything else)."""
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "refused"


@dataclass
class _Counters:
    sent: int = 0
    retried: int = 0
    dead_lettered: int = 0
    skipped_unchanged: int = 0
    consecutive_failures: int = 0
    hold_until: float = 0.0
    last_error: str | None = None
    wake: threading.Event = field(default_factory=threading.Event)


class WebhooksSink:
    """Implements :class:`~consumers.contract.Sink` for signed webhooks (see the module
    docstring for the guarantees)."""

    name: str = "webhooks"
    verify_unsupported = (
        "webhooks are notifications to partners' receivers (seeds/inventory-sync-webhooks.txt): "
        "there is no target to list, each receiver keeps its own copy. What can be checked "
        "instead: the consumer's dead-letter topic {prefix}.dlq.webhooks lists the events no "
        "receiver accepted. To resend every product: `catalog-cdc replay webhooks` (receivers "
        "must be idempotent, as the seed's upsert by external_id is)."
    )
    """Why ``catalog-cdc verify`` cannot compare this target (``Unverifiable``)."""
    kinds: Sequence[str] = ("product",)

    def __init__(
        self,
        subscribers: Sequence[Subscriber],
        state: Path,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        clock: Callable[[], float] = time.time,
        resend: bool = False,
    ) -> None:
        self.subscribers = list(subscribers)
        self.resend = resend
        """A replay: every product is sent again as ``product.updated`` (or ``created``
        / ``deleted``) with a new delivery id, whatever was sent before."""
        self._replay_id = f"replay-{int(clock())}" if resend else ""
        self.state_path = state
        self.max_age = max_age
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock
        self._pending: list[Record] = []
        self._counters = {s.name: _Counters() for s in self.subscribers}
        self._lock = threading.Lock()  # guards the counters
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._outbox: Outbox | None = None
        self._client: httpx.Client | None = None

    @classmethod
    def from_context(cls, context: SinkContext) -> WebhooksSink:
        opts = context.options
        subscribers = load_subscribers(Path(opts.get("config", "webhooks.toml")))
        return cls(
            subscribers,
            Path(opts.get("state", DEFAULT_STATE)),
            max_age=parse_duration(opts.get("max_age", "24h"), "max_age"),
            backoff_initial=parse_duration(opts.get("backoff_initial", "1s"), "backoff_initial"),
            backoff_max=parse_duration(opts.get("backoff_max", "5m"), "backoff_max"),
            resend=context.replay,
        )

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Open the state file and start one delivery thread per subscriber."""
        if self._outbox is not None:
            return
        self._outbox = Outbox(self.state_path)
        self._client = httpx.Client(
            timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False
        )
        self._stop.clear()
        for sub in self.subscribers:
            thread = threading.Thread(
                target=self._deliver_forever, args=(sub,), name=f"webhooks-{sub.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        pending = self._outbox.pending()
        log.info(
            "event=webhooks_opened state=%s subscribers=%s max_age=%.0fs pending=%s",
            self.state_path,
            ",".join(s.name for s in self.subscribers),
            self.max_age,
            pending,
        )
        for name in sorted(set(pending) - set(self._counters)):
            log.warning(
                "event=webhooks_unknown_subscriber subscriber=%s pending=%d hint=%s",
                name,
                pending[name],
                "it is no longer in the config file: its queued events are kept, not sent",
            )

    def close(self) -> None:
        self._stop.set()
        for counters in self._counters.values():
            counters.wake.set()
        for thread in self._threads:
            thread.join(max((s.timeout for s in self.subscribers), default=0) + 5)
        self._threads.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None

    # -- the batch: into the outbox -----------------------------------------------------

    def add(self, records: Sequence[Record]) -> None:
        self._pending.extend(records)

    def flush(self) -> list[Rejected]:
        """Queue the batch's events durably (one transaction); deliveries go on in the
        background.  Raises :class:`TransientSinkError` if the state file cannot be
        written (the batch is kept and queued by the retried flush; what it refused
        travels in the error)."""
        outbox = self._require_open()
        rejected: list[Rejected] = []
        digests: dict[int, str | None] = {}  # id(record) -> content hash (None: a delete)
        records: list[Record] = []
        for r in self._pending:
            if r.kind != "product" or not isinstance(r.doc, ProductDocument | None):
                reason = f"{r.kind} {r.id}: the webhooks consumer sends products only"
                rejected.append(Rejected(r, reason))
                continue
            try:
                digests[id(r)] = None if r.doc is None else _digest(r.doc)
            except (TypeError, ValueError) as exc:
                reason = f"product {r.id}: cannot build the event payload: {exc}"
                rejected.append(Rejected(r, reason))
                continue
            records.append(r)
        now = self._clock()
        queued: list[Queued] = []
        updates: dict[tuple[str, int], Known] = {}
        unchanged: dict[str, int] = {}
        try:
            for sub in self.subscribers:
                known = outbox.known(sub.name, [r.id for r in records])
                for r in records:
                    q = self._event(sub, r, known.get(r.id), digests[id(r)], now)
                    if q is None:
                        continue
                    known[r.id] = updates[(sub.name, r.id)] = Known(
                        r.version, q.present, q.content_hash
                    )
                    if q.send and q.event_type in sub.events:
                        queued.append(q)
                    elif not q.send and q.present:
                        unchanged[sub.name] = unchanged.get(sub.name, 0) + 1
            outbox.enqueue(queued, updates, now)
        except sqlite3.Error as exc:
            self._pending = records  # the refused travel in the error, not again
            raise TransientSinkError(
                f"webhooks state file {self.state_path}: cannot queue the batch ({exc})",
                rejected=rejected,
            ) from exc
        self._pending = []
        with self._lock:
            for name, n in unchanged.items():
                self._counters[name].skipped_unchanged += n
        for counters in self._counters.values():
            counters.wake.set()
        return rejected

    def _event(
        self, sub: Subscriber, r: Record, known: Known | None, digest: str | None, now: float
    ) -> Queued | None:
        """The event ``r`` means for ``sub``; ``None`` for a redelivered record.

        ``send=False``: the state moves on but nothing is sent (the same content again,
        or a delete of a product already deleted for this subscriber)."""
        if known is not None and r.version <= known.version and not self.resend:
            return None  # a redelivered record: queued before
        event_id = events.delivery_id(sub.name, r.id, r.version)
        if self.resend:  # a replay's events are new deliveries (receivers dedupe by id)
            event_id = f"{event_id}-{self._replay_id}"
        created_at = datetime.fromtimestamp(now, UTC)
        if r.doc is None:
            if known is not None and not known.present and not self.resend:
                return Queued(sub.name, r, event_id, events.DELETED, b"", None, False, send=False)
            body = events.deleted_body(event_id, r.id, r.version, r.source_ts_ms, created_at)
            return Queued(sub.name, r, event_id, events.DELETED, body, None, False)
        assert isinstance(r.doc, ProductDocument)
        present = known is not None and known.present
        if present and known is not None and known.content_hash == digest and not self.resend:
            return Queued(sub.name, r, event_id, events.UPDATED, b"", digest, True, send=False)
        kind = events.UPDATED if present else events.CREATED
        body = events.product_body(event_id, kind, r.doc, r.version, created_at)
        return Queued(sub.name, r, event_id, kind, body, digest, True)

    # -- dead letters, stats ------------------------------------------------------------

    def dead_letters(self) -> list[Rejected]:
        """Events dead-lettered since the last call (after their batch was committed).

        For the runtime to put on ``{prefix}.dlq.webhooks``.  Each call acknowledges the
        letters returned by the previous one (the runtime calls again only after Kafka
        acknowledged them), so a crash in between hands them over again: at-least-once.
        Every dead letter also stays in the state file (``dead_letters`` table).
        """
        if self._outbox is None:
            return []
        return self._outbox.hand_over_dead_letters()

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per subscriber: ``sent``, ``retried``, ``dead_lettered``, ``skipped_unchanged``
        (since this process started) and ``pending`` (in the outbox now)."""
        pending = {} if self._outbox is None else self._outbox.pending()
        with self._lock:
            return {
                name: {
                    "sent": c.sent,
                    "retried": c.retried,
                    "dead_lettered": c.dead_lettered,
                    "skipped_unchanged": c.skipped_unchanged,
                    "pending": pending.get(name, 0),
                }
                for name, c in self._counters.items()
            }

    def _require_open(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("WebhooksSink.open() first")
        return self._outbox

    # -- delivery -----------------------------------------------------------------------

    def _deliver_forever(self, sub: Subscriber) -> None:
        counters = self._counters[sub.name]
        while not self._stop.is_set():
            try:
                worked = self._deliver_round(sub, counters)
            except sqlite3.Error as exc:  # the state file: say so, try again shortly
                log.error("event=webhooks_state_error subscriber=%s error=%s", sub.name, exc)
                worked = False
            if not worked:
                counters.wake.wait(IDLE_WAIT)
                counters.wake.clear()

    def _deliver_round(self, sub: Subscriber, counters: _Counters) -> bool:
        """Attempt the due head entries once; ``True`` if any was delivered or settled."""
        outbox = self._outbox
        if outbox is None:
            return False
        now = self._clock()
        worked = False
        for entry in outbox.expired(sub.name, now - self.max_age):
            last = entry.last_error or (
                None
                if counters.last_error is None
                else f"never attempted, the subscriber failing: {counters.last_error}"
            )
            reason = (
                f"not delivered within max_age={self.max_age:g}s ({entry.attempts} attempts; "
                f"last error: {last or 'none'})"
            )
            self._dead(sub, entry, reason, entry.attempts)
            worked = True
        if counters.hold_until > now:
            return worked
        for entry in outbox.heads(sub.name, now):
            if self._stop.is_set():
                break
            outcome = self._attempt(sub, entry)
            worked = worked or outcome
            if not outcome:  # a retryable failure: hold the subscriber back for a while
                break
        return worked

    def _attempt(self, sub: Subscriber, entry: Entry) -> bool:
        """One attempt.  ``True``: delivered or dead-lettered; ``False``: to retry."""
        assert self._client is not None and self._outbox is not None
        now = self._clock()
        headers = events.headers(sub.secret, entry.event_id, entry.event_type, entry.body, now)
        retry_after: float | None = None
        try:
            response = self._client.post(
                sub.url, content=entry.body, headers=headers, timeout=sub.timeout
            )
        except httpx.TimeoutException as exc:
            error = f"timed out after {sub.timeout:g}s ({type(exc).__name__})"
        except httpx.TransportError as exc:
            error = f"cannot connect: {type(exc).__name__}: {exc}"
        else:
            verdict = classify(response.status_code)
            if verdict == "ok":
                self._outbox.delivered(entry)
                with self._lock:
                    c = self._counters[sub.name]
                    c.sent += 1
                    c.consecutive_failures = 0
                log.debug(
                    "event=webhook_delivered subscriber=%s product=%s event=%s id=%s",
                    sub.name,
                    entry.product_id,
                    entry.event_type,
                    entry.event_id,
                )
                return True
            text = response.text[:500].replace("\n", " ")
            if verdict == "refused":
                self._dead(
                    sub, entry, f"refused with {response.status_code}: {text}", entry.attempts + 1
                )
                return True
            error = f"answered {response.status_code}: {text}"
            if response.status_code == 429:
                retry_after = retry_after_seconds(response.headers.get("Retry-After"), now)
        attempts = entry.attempts + 1
        delay = (
            retry_after
            if retry_after is not None
            else _jittered(
                backoff_delay(attempts, self.backoff_initial, self.backoff_max), self.backoff_max
            )
        )
        expires = entry.enqueued_at + self.max_age
        next_at = min(now + delay, expires)
        self._outbox.reschedule(entry, next_at, error)
        with self._lock:
            c = self._counters[sub.name]
            c.retried += 1
            c.consecutive_failures += 1
            c.last_error = error
            hold = retry_after
            if hold is None:
                hold = _jittered(
                    backoff_delay(c.consecutive_failures, self.backoff_initial, self.backoff_max),
                    self.backoff_max,
                )
            c.hold_until = min(now + hold, expires)
        log.warning(
            "event=webhook_retry subscriber=%s product=%s event=%s id=%s attempt=%d "
            "retry_in=%.1fs error=%s",
            sub.name,
            entry.product_id,
            entry.event_type,
            entry.event_id,
            attempts,
            delay,
            error,
        )
        return False

    def _dead(self, sub: Subscriber, entry: Entry, reason: str, attempts: int) -> None:
        assert self._outbox is not None
        self._outbox.dead_letter(entry, reason, attempts, self._clock())
        with self._lock:
            self._counters[sub.name].dead_lettered += 1
        log.error(
            "event=webhook_dead_letter subscriber=%s product=%s version=%s event=%s id=%s "
            "reason=%s",
            sub.name,
            entry.product_id,
            entry.version,
            entry.event_type,
            entry.event_id,
            reason,
        )


def _digest(doc: ProductDocument) -> str:
    """Hash of the payload without ``version`` (an update that changes nothing a
    receiver sees is not sent)."""
    payload = events.product_payload(doc)
    payload.pop("version", None)
    return hashlib.sha256(_json_dumps(payload).encode("utf-8")).hexdigest()
