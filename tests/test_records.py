import json

import pytest

from lightreasoner.errors import LightReasonerError
from lightreasoner.records import ResumableWriter, SoftLabelRecord, read_records

RELEASE_LINE = {
    "prompt_id": "Natalia sold clips to 48 of her friends. How many?",
    "step": 3,
    "prefix": "To find",
    "tokens": [" the", " how"],
    "token_ids": [279, 1246],
    "weights": [0.75, 0.25],
    "kl_divergence": 0.81,
}


def test_release_records_are_read(tmp_path):
    path = tmp_path / "release.jsonl"
    path.write_text(json.dumps(RELEASE_LINE) + "\n\n" + json.dumps({**RELEASE_LINE, "step": 4}) + "\n")
    recs = read_records(path)
    assert [r.step for r in recs] == [3, 4]
    assert not recs[0].is_exact and recs[0].question_text == RELEASE_LINE["prompt_id"]
    assert json.loads(recs[0].to_json()) == RELEASE_LINE  # round trip writes the release's keys only


def test_bad_record_files_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RELEASE_LINE) + "\n{oops\n")
    with pytest.raises(LightReasonerError, match=r"bad\.jsonl:2: not valid JSON"):
        read_records(path)
    path.write_text(json.dumps({"prompt_id": "x"}) + "\n")
    with pytest.raises(LightReasonerError, match=r"bad\.jsonl:1: not a soft-label record"):
        read_records(path)
    path.write_text(json.dumps({**RELEASE_LINE, "weights": [1.0]}) + "\n")
    with pytest.raises(LightReasonerError, match="equal length"):
        read_records(path)


def rec(i: int, step: int) -> SoftLabelRecord:
    return SoftLabelRecord(f"q{i}", step, "p", ["a"], [1], [1.0], 0.5, problem_index=i)


def test_writer_recovers_from_a_torn_write(tmp_path):
    out = tmp_path / "out.jsonl"
    w = ResumableWriter(out, {"a": 1})
    w.commit(0, [rec(0, 1), rec(0, 2)], {})
    w.commit(1, [], {})
    # simulate a kill while problem 2 was being written: a full record and half a line
    with w.partial.open("a") as f:
        f.write(rec(2, 1).to_json() + "\n" + rec(2, 2).to_json()[:10])
    with w.progress.open("a") as f:
        f.write('{"index": 2, "rec')
    w2 = ResumableWriter(out, {"a": 1})
    assert set(w2.done) == {0, 1}
    assert len(w2.partial.read_text().splitlines()) == 2
    w2.commit(2, [rec(2, 1)], {})
    w2.finish()
    assert [(r.problem_index, r.step) for r in read_records(out)] == [(0, 1), (0, 2), (2, 1)]
    assert ResumableWriter(out, {"a": 1}).complete


def test_writer_refuses_to_resume_with_other_settings(tmp_path):
    out = tmp_path / "out.jsonl"
    ResumableWriter(out, {"beta": 0.4}).commit(0, [rec(0, 1)], {})
    with pytest.raises(LightReasonerError, match=r"other inputs or settings is here .changed: beta"):
        ResumableWriter(out, {"beta": 0.5})
    w = ResumableWriter(out, {"beta": 0.5}, overwrite=True)
    assert w.done == {} and not w.partial.exists()


def test_an_extending_writer_reuses_a_published_output_and_merges_new_units_in_order(tmp_path):
    """Evaluation's use: rows keyed by ``id``; a published file (even one an older version
    appended to and a kill tore) counts as finished, and new units extend it."""
    out = tmp_path / "gsm8k.jsonl"
    row = lambda i: json.dumps({"id": i, "correct": i == "b"}) + "\n"  # noqa: E731
    out.write_text(row("c") + row("a") + '{"id": "x", "corr')  # a torn append: "x" is not finished
    w = ResumableWriter(out, {"m": 1}, stage="eval", extends=True, key="id")
    assert not w.complete and set(w.done) == {"c", "a"} and out.read_text() == row("c") + row("a")
    w.commit_group([("b", [{"id": "b", "correct": True}], {})])
    other = ResumableWriter(out, {"m": 1}, rank=1, stage="eval", extends=True, key="id")
    assert set(other.done) == {"a", "b", "c"}  # the main shard's unit and the published rows
    other.commit_group([("x", [{"id": "x", "correct": False}], {})])
    w.refresh()
    position = {"a": 0, "b": 1, "c": 2}
    w.finish(order=lambda i: position.get(i, len(position)))  # "x" is outside the selection: kept, last
    assert out.read_text() == row("a") + row("b") + row("c") + row("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gsm8k.jsonl"]  # shards gone
    again = ResumableWriter(out, {"m": 1}, stage="eval", extends=True, key="id")
    mtime = out.stat().st_mtime_ns
    again.finish(order=lambda i: position.get(i, len(position)))
    assert out.stat().st_mtime_ns == mtime  # the same bytes: not rewritten


def test_records_of_one_problem_come_from_the_first_shard_that_holds_it(tmp_path):
    out = tmp_path / "s.jsonl"
    rec = lambda i, s: {"problem_index": i, "step": s}  # noqa: E731
    w = ResumableWriter(out, {"m": 1})
    w.commit_group([(0, [rec(0, 0), rec(0, 1)], {}), (2, [rec(2, 0)], {})])
    other = ResumableWriter(out, {"m": 1}, rank=1)
    other.commit_group([(1, [rec(1, 0)], {}), (0, [rec(0, 9)], {})])  # problem 0 again: the main shard's stays
    w.refresh()
    w.finish()
    assert [json.loads(x) for x in out.read_text().splitlines()] == [rec(0, 0), rec(0, 1), rec(1, 0), rec(2, 0)]
