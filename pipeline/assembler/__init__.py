"""The assembler: one denormalized document per product and per category.

It joins the raw table changes of the reader (``{prefix}.{schema}.{table}``) into the
documents of :mod:`pipeline.documents.model` and writes them to the compacted
topics ``{prefix}.doc.products`` and ``{prefix}.doc.categories``.
:mod:`pipeline.documents.reference` builds the same documents straight from the
database with SQL: the ground truth the assembler's output is checked against.
"""
