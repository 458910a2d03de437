"""Faults of the landing zone: a symlink out of it, a FIFO, a dangling link, a symlinked folder,
a truncated or padded gzip. None may put a byte the zone does not own into the warehouse, hang
ingestion, or land part of a file; each must be listed in the manifest with what to do."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from feedback_pipeline.ingest.landing_files import ingest_file, ingest_kind, landing_zone_problems
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline_tests.conftest import baseline, feedback, prediction, run_job
from feedback_pipeline_tests.servers import write_dagster_home

PREDICTIONS = KINDS["predictions"]
# What a file outside the landing zone holds: it must never reach any table.
SECRET = "s3cret-passphrase-0f-the-host"


def jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def write_secret(folder: Path, name: str = "secret.jsonl") -> Path:
    """A file outside the landing zone: a bare secret line and a valid prediction named after
    it, so following a link would put it in ``raw.rejected_records`` and ``raw.predictions``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".csv"):
        path.write_text(
            "prediction_id,predicted_at,confidence,features\n"
            f'{SECRET},2026-01-05T10:00:00Z,0.5,"{{""a"": 1}}"\n{SECRET}\n'
        )
    else:
        path.write_bytes(SECRET.encode() + b"\n" + jsonl([prediction(SECRET)]))
    return path


def symlink(link: Path, target: Path | str) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def tables_holding(con: duckdb.DuckDBPyConnection, text: str) -> list[str]:
    """Every table of the warehouse with a row whose text contains ``text``."""
    tables = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE'"
    ).fetchall()
    return [
        f"{schema}.{name}"
        for schema, name in tables
        if con.execute(
            f'SELECT count(*) FROM "{schema}"."{name}" t WHERE strpos(t::VARCHAR, ?) > 0', [text]
        ).fetchall()[0][0]
    ]


def manifest(con: duckdb.DuckDBPyConnection) -> dict[str, tuple]:
    """path -> (status, error, records_read, accepted), for paths listed once."""
    rows = con.execute(
        "SELECT path, status, error, records_read, accepted FROM raw.ingested_files"
    ).fetchall()
    assert len({r[0] for r in rows}) == len(rows), rows
    return {path: tuple(rest) for path, *rest in rows}


def count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return con.execute(sql).fetchall()[0][0]


def test_ingest_job_refuses_links_out_of_the_zone_and_ingests_everything_else(tmp_path: Path):
    """The real ``ingest_job`` (in process; `dagster job execute` is test_ingest_job's) over a
    zone holding a symlink to a file outside it and a symlinked folder leading outside. Old
    code: the link was followed (the secret landed in ``raw.predictions`` and
    ``raw.rejected_records``, the file counted as ``ingested``) and the folder was ignored
    without a word."""
    data_dir, home, outside = tmp_path / "data", tmp_path / "home", tmp_path / "outside"
    landing = data_dir / "landing"
    secret = write_secret(outside)
    good = {
        "predictions/2026/01/p.jsonl": jsonl([prediction("p1"), prediction("p2")]),
        "feedback/f.jsonl": jsonl(
            [feedback("e1", "p1", "accept", "2026-01-05T11:00:00Z")]
            + [feedback("e2", "p2", "reject", "2026-01-05T11:00:00Z")]
        ),
        "baseline/b.jsonl.gz": gzip.compress(jsonl([baseline("b1"), baseline("b2")])),
    }
    for rel_path, body in good.items():
        (landing / rel_path).parent.mkdir(parents=True, exist_ok=True)
        (landing / rel_path).write_bytes(body)
    symlink(landing / "predictions/x/leak.jsonl", secret)
    symlink(landing / "feedback/more", outside)  # a folder leading out of the zone
    write_dagster_home(home)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert run_job(data_dir, instance, "ingest_job").success

    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        assert tables_holding(con, SECRET) == []
        files = manifest(con)
        problems = landing_zone_problems(con, landing, "predictions")
        ids = con.execute("SELECT prediction_id FROM raw.predictions ORDER BY 1").fetchall()
    finally:
        con.close()
    root = os.path.realpath(landing)
    leak = files.pop("predictions/x/leak.jsonl")
    assert leak[0] == "refused" and leak[2:] == (0, 0)
    assert (
        f"predictions/x/leak.jsonl is a symlink to {os.path.realpath(secret)}, outside the "
        f"landing zone {root}" in leak[1]
    )
    assert "move the file itself into the landing zone" in leak[1]
    folder = files.pop("feedback/more")
    assert folder[0] == "refused"
    assert f"a symlink to {os.path.realpath(outside)}, outside the landing zone" in folder[1]
    assert {path: status for path, (status, *_) in files.items()} == dict.fromkeys(good, "ingested")
    assert {path: accepted for path, (*_, accepted) in files.items()} == dict.fromkeys(good, 2)
    assert ids == [("p1",), ("p2",)]
    assert len(problems) == 1 and "predictions/x/leak.jsonl: refused" in problems[0]

    # Dagster shows it: the WARN check of raw_predictions names the refused file.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run_record,) = instance.get_runs()
        evaluations = {
            record.event_log_entry.dagster_event.event_specific_data.asset_key.to_user_string(): (
                record.event_log_entry.dagster_event.event_specific_data
            )
            for record in instance.get_records_for_run(
                run_record.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            ).records
            if record.event_log_entry.dagster_event.event_specific_data.check_name
            == "landing_files_readable"
        }
    assert not evaluations["raw_predictions"].passed
    assert "predictions/x/leak.jsonl: refused" in evaluations["raw_predictions"].description
    assert "feedback/more: refused" in evaluations["raw_feedback_events"].description
    assert evaluations["baseline_examples"].passed


INGEST_IN_A_PROCESS = """
import sys
from pathlib import Path
from feedback_pipeline.warehouse.schema import KINDS
from feedback_pipeline.ingest.landing_files import ingest_file, ingest_kind
from feedback_pipeline.warehouse import connection
con = connection.connect(Path(sys.argv[1]))
landing = Path(sys.argv[2])
for result in ingest_kind(con, landing, "predictions"):
    print(result.path, result.status)
pipe = landing / "predictions" / "pipe.jsonl"
print("again", ingest_file(con, landing, pipe, KINDS["predictions"]).status)
con.close()
"""


def test_a_fifo_is_refused_and_never_opened(data_dir: Path, landing: Path, write_landing):
    """Old code: ``ingest_kind`` dropped the FIFO without a word, and ``ingest_file`` on it
    blocked forever in ``open``. Ingestion runs in a process of its own with a timeout, so a
    regression fails here instead of hanging the suite."""
    write_landing("predictions", "a.jsonl", [prediction("a")])
    os.mkfifo(landing / "predictions" / "pipe.jsonl")
    try:
        run = subprocess.run(
            [sys.executable, "-c", INGEST_IN_A_PROCESS, data_dir / "warehouse.duckdb", landing],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("ingestion hung on a FIFO in the landing zone: it was opened")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "predictions/a.jsonl ingested",
        "predictions/pipe.jsonl refused",
        "again skipped",
    ]
    con = warehouse.connect(data_dir / "warehouse.duckdb")
    try:
        status, error, read, accepted = manifest(con)["predictions/pipe.jsonl"]
        assert (status, read, accepted) == ("refused", 0, 0)
        assert "predictions/pipe.jsonl is a FIFO (named pipe), not a regular file" in error
        assert count(con, "SELECT count(*) FROM raw.predictions") == 1
    finally:
        con.close()


@pytest.mark.parametrize(
    ("link", "target", "expected"),
    [
        ("leak.jsonl", "{outside}/secret.jsonl", "is a symlink to {outside}/secret.jsonl, outside"),
        # read by DuckDB through its path: must not be handed to read_csv either
        ("leak.csv", "{outside}/secret.csv", "is a symlink to {outside}/secret.csv, outside"),
        (
            "deep/up.jsonl",
            "../../../outside/secret.jsonl",
            "is a symlink to {outside}/secret.jsonl",
        ),
        ("gone.jsonl", "{landing}/predictions/nowhere.jsonl", "is a dangling symlink to"),
        ("folder", "{outside}", "is a symlink to {outside}, outside the landing zone"),
        ("same_zone", "{landing}/feedback", "is a symlink to the directory"),
    ],
)
def test_links_that_do_not_lead_to_a_regular_file_in_the_zone_are_refused(
    con, landing, write_landing, tmp_path, link, target, expected
):
    """Old code: the first three were read (the secret landed), the last three were dropped
    without a word (``is_file`` is false for them)."""
    outside = os.path.realpath(tmp_path / "outside")
    write_secret(Path(outside))
    write_secret(Path(outside), "secret.csv")
    (landing / "feedback").mkdir()
    write_landing("predictions", "good.jsonl", [prediction("a")])
    place = {"outside": outside, "landing": landing}
    symlink(landing / "predictions" / link, target.format(**place))

    results = {r.path: r for r in ingest_kind(con, landing, "predictions")}

    refused = results.pop(f"predictions/{link}")
    assert (refused.status, refused.records_read) == ("refused", 0)
    assert f"predictions/{link} {expected.format(**place)}" in refused.error
    assert "nothing of it was read" in refused.error
    assert {p: r.status for p, r in results.items()} == {"predictions/good.jsonl": "ingested"}
    assert tables_holding(con, SECRET) == []
    size, digest = con.execute(
        "SELECT size_bytes, content_hash FROM raw.ingested_files WHERE status = 'refused'"
    ).fetchall()[0]
    assert size == os.lstat(landing / "predictions" / link).st_size  # the link's, not the file's
    assert len(digest) == 64
    assert any(
        f"predictions/{link}: refused" in p
        for p in landing_zone_problems(con, landing, "predictions")
    )
    # Asked for by name, the file is refused too (and, listed already, skipped).
    assert (
        ingest_file(con, landing, landing / "predictions" / link, PREDICTIONS).status == "skipped"
    )
    assert tables_holding(con, SECRET) == []


def test_links_to_regular_files_inside_the_zone_are_ingested(con, data_dir, landing, tmp_path):
    """A link is fine when it stays in the zone, relative or absolute, and so is a landing dir
    reached through a symlink (the root is resolved, not compared as written)."""
    shared = landing / "shared"  # inside the zone, but no kind's folder
    shared.mkdir()
    (shared / "p.jsonl").write_bytes(jsonl([prediction("p1"), prediction("p2")]))
    (shared / "q.jsonl").write_bytes(jsonl([prediction("q1")]))
    symlink(landing / "predictions/relative.jsonl", "../shared/p.jsonl")
    symlink(landing / "predictions/absolute.jsonl", shared / "q.jsonl")
    alias = symlink(tmp_path / "alias", landing)

    results = ingest_kind(con, alias, "predictions")

    assert [(r.path, r.status, r.accepted) for r in results] == [
        ("predictions/absolute.jsonl", "ingested", 1),
        ("predictions/relative.jsonl", "ingested", 2),
    ]
    assert con.execute(
        "SELECT prediction_id, source_file FROM raw.predictions ORDER BY 1"
    ).fetchall() == [
        ("p1", "predictions/relative.jsonl"),
        ("p2", "predictions/relative.jsonl"),
        ("q1", "predictions/absolute.jsonl"),
    ]
    assert landing_zone_problems(con, alias, "predictions") == []


def test_a_refused_file_is_listed_once_and_lands_once_moved_in(con, landing, tmp_path):
    """A rerun skips a refused link by its ``lstat`` (no new manifest row); a link made again
    to the same target is skipped by its refusal hash; the file itself, moved in, lands. Old
    code: the link's file was ingested on the first run."""
    outside = tmp_path / "outside"
    outside.mkdir()
    records = jsonl([prediction("m1"), prediction("m2")])
    (outside / "m.jsonl").write_bytes(records)
    link = symlink(landing / "predictions/m.jsonl", outside / "m.jsonl")

    assert [r.status for r in ingest_kind(con, landing, "predictions")] == ["refused"]
    rows = count(con, "SELECT count(*) FROM raw.ingested_files")
    assert [r.status for r in ingest_kind(con, landing, "predictions")] == ["skipped"]
    link.unlink()
    symlink(link, outside / "m.jsonl")  # a new link: new lstat, same refusal
    os.utime(link, ns=(1, 1), follow_symlinks=False)
    assert [r.status for r in ingest_kind(con, landing, "predictions")] == ["skipped"]
    assert count(con, "SELECT count(*) FROM raw.ingested_files") == rows == 1
    assert count(con, "SELECT count(*) FROM raw.predictions") == 0
    assert len(landing_zone_problems(con, landing, "predictions")) == 1

    link.unlink()
    link.write_bytes(records)  # the file itself, moved into the zone

    (result,) = ingest_kind(con, landing, "predictions")
    assert (result.status, result.accepted) == ("ingested", 2)
    assert [r.status for r in ingest_kind(con, landing, "predictions")] == ["skipped"]
    assert count(con, "SELECT count(*) FROM raw.predictions") == 2
    assert landing_zone_problems(con, landing, "predictions") == []


RECORDS = [prediction(f"g{i}") for i in range(40)]
WHOLE = gzip.compress(jsonl(RECORDS), mtime=0)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(WHOLE[:5], id="in-the-header"),
        pytest.param(WHOLE[: len(WHOLE) * 3 // 4], id="mid-stream"),
        pytest.param(WHOLE[:-4], id="only-the-size-missing"),  # every line is complete
    ],
)
def test_a_truncated_gzip_lands_nothing_and_its_replacement_lands_once(
    con, landing, write_landing, cut
):
    """Old code: ingested with the complete lines (all 40 when only the trailer was cut) and
    at most a 'malformed JSON' reject; nothing said the file was cut."""
    path = write_landing("predictions", "g.jsonl.gz", cut)

    result = ingest_file(con, landing, path, PREDICTIONS)

    assert (result.status, result.records_read, result.accepted) == ("unreadable", 0, 0)
    assert result.error == (
        f"gzip stream ended early: the file is truncated ({len(cut)} bytes read); nothing of "
        "it was ingested; replace it with the complete file"
    )
    assert count(con, "SELECT count(*) FROM raw.predictions") == 0
    assert count(con, "SELECT count(*) FROM raw.rejected_records") == 0
    (problem,) = landing_zone_problems(con, landing, "predictions")
    assert "predictions/g.jsonl.gz: unreadable (gzip stream ended early" in problem

    write_landing("predictions", "g.jsonl.gz", WHOLE)  # the complete file
    (whole,) = ingest_kind(con, landing, "predictions")
    assert (whole.status, whole.accepted, whole.rejected) == ("ingested", 40, 0)
    assert [r.status for r in ingest_kind(con, landing, "predictions")] == ["skipped"]
    assert count(con, "SELECT count(*) FROM raw.predictions") == 40
    assert landing_zone_problems(con, landing, "predictions") == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            gzip.compress(jsonl(RECORDS[:25]))
            + gzip.compress(b"")
            + gzip.compress(jsonl(RECORDS[25:])),
            id="three-members",
        ),
        pytest.param(WHOLE + b"\0" * 512, id="zero-padding"),
    ],
)
def test_a_multi_member_gzip_is_read_whole(con, landing, write_landing, body):
    """Old code: only the first member was read, the rest dropped without a word."""
    assert gzip.decompress(body) == jsonl(RECORDS)  # what the gzip tool reads
    path = write_landing("predictions", "m.jsonl.gz", body)
    result = ingest_file(con, landing, path, PREDICTIONS)
    assert (result.status, result.records_read, result.accepted) == ("ingested", 40, 40)


@pytest.mark.parametrize(
    ("tail", "error_part"),
    [
        (b"appended by mistake\n", "20 bytes after the end of the gzip stream"),
        (b"\x1f\x8bnot a member", "not a readable gzip file"),
        (b"\0\0\0junk", "7 bytes after the end of the gzip stream"),
    ],
)
def test_trailing_garbage_after_a_gzip_lands_nothing(con, landing, write_landing, tail, error_part):
    """Old code: ingested the first member and ignored what followed it."""
    path = write_landing("predictions", "t.jsonl.gz", WHOLE + tail)
    result = ingest_file(con, landing, path, PREDICTIONS)
    assert (result.status, result.records_read, result.accepted) == ("unreadable", 0, 0)
    assert error_part in result.error and "nothing of it was ingested" in result.error
    assert count(con, "SELECT count(*) FROM raw.predictions") == 0
