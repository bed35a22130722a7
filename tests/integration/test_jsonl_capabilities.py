"""The JSONL example consumer's capabilities on the real stack, through the CLI that
asks for them by capability (nothing in ``pipeline/`` names the consumer).

``catalog-cdc verify jsonl``: PostgreSQL -> reader -> assembler -> the jsonl consumer
until the file equals the database (checked here without the verifier), then in sync;
the file damaged by hand (a product's lines removed, a wrong document winning with a
higher version, an extra id, a category's delete line) makes it list exactly those;
``--repair`` appends the right lines through the sink and it is in sync again.

``catalog-cdc replay jsonl``: with the live consumer running and edits arriving, a
replay interrupted after its first batches, then resumed by the CLI, rebuilds the file
beside the live one and renames it over: the file is then the topics' latest
documents (the damage of the old file is gone), and the live consumer's later lines land
in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consumers.jsonl import JsonlSink, line_document, replay_file
from consumers.runtime import ConsumerRuntime, RuntimeSettings
from pipeline import cli
from pipeline.demo.seed import seed_catalog
from pipeline.documents.model import Document
from pipeline.documents.reading import latest_documents
from pipeline.documents.reference import expected_documents
from pipeline.replay import ReplayProgress, replay
from pipeline.settings import ConnectionSettings
from tests.integration.assembler_support import running_assembler, wait_in_sync
from tests.integration.reader_support import running_reader, wait_for
from tests.integration.test_consumer_runtime import _produce, _product, running

pytestmark = pytest.mark.integration

Key = tuple[str, int]


def _winning(path: Path) -> dict[Key, dict[str, Any]]:
    """The file as a reader reads it (written here, not the sink's ``current_state``):
    the highest version per key, the later line on a tie."""
    out: dict[Key, dict[str, Any]] = {}
    if not path.exists():
        return out
    for text in path.read_text().splitlines():
        line = json.loads(text)
        key = (line["kind"], line["id"])
        if key not in out or line["version"] >= out[key]["version"]:
            out[key] = line
    return out


def _content(path: Path) -> dict[Key, dict[str, Any]]:
    """Per live key, the document without what comes from the WAL."""
    return {
        key: {k: v for k, v in line["document"].items() if k not in ("version", "source_ts_ms")}
        for key, line in _winning(path).items()
        if not line.get("deleted")
    }


def _form(kind: str, doc: Document) -> tuple[Key, dict[str, Any]]:
    body = line_document(doc)
    body.pop("version")
    body.pop("source_ts_ms")
    return (kind, doc.id), body


def _runtime(sink: JsonlSink, bootstrap: str, prefix: str) -> ConsumerRuntime:
    return ConsumerRuntime(
        sink,
        bootstrap=bootstrap,
        topic_prefix=prefix,
        settings=RuntimeSettings(poll_timeout=0.2, backoff_initial=0.05),
    )


def _verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    status = cli.main(["verify", "jsonl", *args, "--json", "--limit", "50"])
    return status, json.loads(capsys.readouterr().out)


def test_verify_and_repair_jsonl(
    catalog_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed_catalog(catalog_dsn, products=30, seed=41)
    path = tmp_path / "docs.jsonl"

    def want() -> dict[Key, dict[str, Any]]:
        with psycopg.connect(catalog_dsn) as conn:
            products, categories = expected_documents(conn)
        pairs = [_form("product", d) for d in products.values()]
        pairs += [_form("category", d) for d in categories.values()]
        return dict(pairs)

    with (
        running_reader(catalog_dsn, kafka_bootstrap, topic_prefix),
        running_assembler(kafka_bootstrap, topic_prefix, tmp_path / "a.sqlite"),
        running(_runtime(JsonlSink(path), kafka_bootstrap, topic_prefix)),
    ):
        wait_in_sync(catalog_dsn, kafka_bootstrap, topic_prefix)
        wait_for(lambda: _content(path) == want(), 60, "the file to equal the database")

    expected = want()
    n_products = sum(1 for kind, _ in expected if kind == "product")
    n_categories = len(expected) - n_products
    args = ("--dsn", catalog_dsn, "--option", f"path={path}")
    status, result = _verify(capsys, *args)
    assert status == 0, result
    assert result["classes"] == {
        "product": {"in sync": n_products, "out of sync": 0, "missing": 0, "extra": 0},
        "category": {"in sync": n_categories, "out of sync": 0, "missing": 0, "extra": 0},
    }

    # Damage by hand: product `gone` loses its lines; `wrong` gets a line with another
    # name and a higher version (it wins); an extra id; category `dropped` a delete line.
    winning = _winning(path)
    gone, wrong = sorted(i for kind, i in expected if kind == "product")[:2]
    dropped = min(i for kind, i in expected if kind == "category")
    extra = max(i for _, i in expected) + 1000
    kept = [t for t in path.read_text().splitlines() if json.loads(t)["id"] != gone
            or json.loads(t)["kind"] != "product"]  # fmt: skip
    bad = dict(winning[("product", wrong)])
    bad["version"] += 1
    bad["document"] = {**bad["document"], "name": "Edited by hand"}
    stray = {**bad, "id": extra, "document": {**bad["document"], "id": extra}}
    deleted = {"kind": "category", "id": dropped, "deleted": True,
               "version": winning[("category", dropped)]["version"] + 1}  # fmt: skip
    damage = [json.dumps(bad), json.dumps(stray), json.dumps(deleted)]
    path.write_text("\n".join(kept + damage) + "\n")

    status, result = _verify(capsys, *args)
    assert status == 1, result
    assert result["status"] == "out of sync"
    assert result["classes"]["product"] == {
        "in sync": n_products - 2, "out of sync": 1, "missing": 1, "extra": 1
    }  # fmt: skip
    assert result["classes"]["category"]["missing"] == 1
    found = {(d["class"], d["id"], d["status"]) for d in result["differences"]}
    assert found == {("product", gone, "missing"), ("product", wrong, "out of sync"),
                     ("product", extra, "extra"), ("category", dropped, "missing")}  # fmt: skip
    [changed] = [d for d in result["differences"] if d["status"] == "out of sync"]
    assert [f["field"] for f in changed["fields"]] == ["name"]
    assert changed["fields"][0]["sink"] == '"Edited by hand"'

    status, result = _verify(capsys, *args, "--repair")
    assert status == 0, result
    assert result["repair"]["reemitted"] == 3 and result["repair"]["deleted"] == 1
    assert result["after_repair"]["status"] == "in sync"
    assert _content(path) == want()  # checked without the verifier too
    # Repaired by appending: the damage is still in the file, outvoted by one version.
    assert path.read_text().count("Edited by hand") == 2
    assert _winning(path)[("product", wrong)]["version"] == bad["version"] + 1


def test_replay_jsonl_rebuilds_the_file_beside_the_live_consumer_and_resumes(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    _produce(kafka_bootstrap, topic_prefix, [(i, _product(i, 10 + i)) for i in range(1, 81)])
    live_path, state = tmp_path / "docs.jsonl", tmp_path / "replay.json"
    options = {"path": str(live_path), "kinds": "product"}
    conns = ConnectionSettings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix)

    def topics() -> dict[Key, dict[str, Any]]:
        latest = latest_documents(kafka_bootstrap, topic_prefix, "product")
        return dict(_form("product", m.doc) for m in latest.values() if m.doc is not None)

    live = _runtime(JsonlSink(live_path, ("product",)), kafka_bootstrap, topic_prefix)
    with running(live):
        wait_for(lambda: len(_content(live_path)) == 80, 60, "the live consumer's file")
        with live_path.open("a") as f:  # damage a rebuild must not keep
            f.write(json.dumps({"kind": "product", "id": 999, "version": 1, "document": {}}))
            f.write("\n")
        before = os.stat(live_path).st_ino

        stop = threading.Event()

        def progress(p: ReplayProgress) -> None:
            if p.done >= 20:
                stop.set()

        first = replay("jsonl", connections=conns, options=options, state_path=state,
                       stop=stop, progress=progress, batch_size=10)  # fmt: skip
        assert first.detail.get("interrupted") and first.detail["pass"] == "first", first
        assert state.exists() and replay_file(live_path, state).exists()
        assert os.stat(live_path).st_ino == before  # the live file untouched so far

        def edits() -> None:  # updates and a delete, while the replay resumes
            for round_ in range(1, 6):
                items: list[tuple[int, Any]] = [
                    (i, _product(i, 1000 * round_ + i, f"r{round_}")) for i in range(1, 21)
                ]
                if round_ == 3:
                    items.append((80, None))  # version 99
                _produce(kafka_bootstrap, topic_prefix, items)
                time.sleep(0.2)

        editing = threading.Thread(target=edits)
        editing.start()
        env = {
            **os.environ,
            "CATALOG_CDC_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CATALOG_CDC_TOPIC_PREFIX": topic_prefix,
        }
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "replay", "jsonl", "--json",
             "--option", f"path={live_path}", "--option", "kinds=product", "--state", str(state)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        editing.join()
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["detail"]["pass"] == "done" and result["detail"]["switched"] is True
        assert not state.exists() and not replay_file(live_path, state).exists()
        assert os.stat(live_path).st_ino != before  # a new file, renamed over the old one

        _produce(kafka_bootstrap, topic_prefix, [(1, _product(1, 9000, "after the replay"))])
        wait_for(lambda: _content(live_path) == topics(), 60, "the file to equal the topics")
    content = _content(live_path)
    assert ("product", 999) not in content and ("product", 80) not in content
    assert content[("product", 1)]["name"] == "after the replay"  # the live sink followed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]


def test_nothing_in_pipeline_names_the_jsonl_consumer() -> None:
    root = Path(__file__).resolve().parents[2] / "pipeline"
    naming = [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
        and "jsonl" in p.read_text(errors="replace").lower()
    ]  # fmt: skip
    assert naming == []
