"""Signed webhooks: product.created / product.updated / product.deleted to subscribers.

See ``docs/webhooks.md``.  :mod:`.events` is the wire format (payload, headers,
signature), :mod:`.config` the subscribers file, :mod:`.outbox` the durable per-
subscriber outbox, :mod:`.sink` the sink and its delivery threads.
"""
