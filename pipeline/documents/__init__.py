"""The document contract between the assembler and every consumer.

The assembler writes, and every sink reads, one document per product and per category
on the compacted topics named by :mod:`pipeline.topics`:

* :mod:`pipeline.documents.model`: the documents (:class:`~pipeline.documents.model.
  ProductDocument`, :class:`~pipeline.documents.model.CategoryDocument`) and their
  canonical JSON;
* :mod:`pipeline.documents.wire`: their wire form (Avro, headers, keys) and
  :class:`~pipeline.documents.wire.DocumentMessage`, one decoded message;
* :mod:`pipeline.documents.reading`: reading them back from the topics (the latest
  document per key, every message in order);
* :mod:`pipeline.documents.reference`: the same documents built straight from the
  database by SQL (the oracle the verifiers and the tests compare with).

Both sides import this package; it imports neither (a test keeps it so).
"""
