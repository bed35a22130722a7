"""The edge KV consumer: the storefront key layout in SQLite, Redis or Workers KV.

See docs/edge-kv.md.
"""
