import json
import re

import pytest
from conftest import SHARED_DATA

from lightreasoner.cli import main
from lightreasoner.evaluation.benchmarks import PAPER_BENCHMARKS

ALL = ",".join([*PAPER_BENCHMARKS, "math500"])


@pytest.fixture(scope="module")
def eval_run(pair, tmp_path_factory):
    if not SHARED_DATA.exists():
        pytest.skip("benchmark files of ../shared/data not present")
    out = tmp_path_factory.mktemp("eval") / "base"
    code = main(
        [
            "eval",
            "-q",
            "--model",
            str(pair[0]),
            "--benchmarks",
            ALL,
            "--data-dir",
            str(SHARED_DATA),
            "--limit",
            "2",
            "--max-new-tokens",
            "12",
            "--batch-size",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_end_to_end_eval_writes_per_problem_files_summary_and_table(eval_run):
    summary = json.loads((eval_run / "summary.json").read_text())
    assert set(summary["results"]) == set(ALL.split(","))
    for name, res in summary["results"].items():
        rows = [json.loads(x) for x in (eval_run / f"{name}.jsonl").read_text().splitlines()]
        assert res["n"] == len(rows) == 2
        assert res["correct"] == sum(r["correct"] for r in rows)
        for r in rows:
            assert {"id", "problem", "gold", "completion", "extracted", "correct"} <= r.keys()
    table = (eval_run / "results.md").read_text()
    assert table.startswith("| Model | GSM8K | MATH | SVAMP | ASDiv | Minerva Math | Olympiad Bench | MMLU STEM |")
    assert "AVG." in table and summary["name"] in table


def test_rerun_resumes_without_generating_again(pair, eval_run, capsys):
    files = {p.name: p.read_text() for p in eval_run.glob("*.jsonl")}
    # cut the last problem of one benchmark and tear a line: the rerun must redo exactly that one
    gsm = eval_run / "gsm8k.jsonl"
    first = gsm.read_text().splitlines()[0]
    gsm.write_text(first + "\n" + '{"id": "1", "probl')
    assert (
        main(
            [
                "eval",
                "-q",
                "--model",
                str(pair[0]),
                "--benchmarks",
                ALL,
                "--data-dir",
                str(SHARED_DATA),
                "--limit",
                "2",
                "--max-new-tokens",
                "12",
                "--out",
                str(eval_run),
            ]
        )
        == 0
    )
    after = {p.name: p.read_text() for p in eval_run.glob("*.jsonl")}
    assert after == files


def test_adapter_and_compare(pair, eval_run, tmp_path, capsys):
    import torch

    from lightreasoner.config import TrainConfig
    from lightreasoner.models import load_model
    from lightreasoner.training import lora_model

    peft_model = lora_model(load_model(str(pair[0])), TrainConfig(model="-", samples="-", output_dir="-"))
    torch.manual_seed(0)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    out = tmp_path / "tuned"
    assert (
        main(
            [
                "eval",
                "-q",
                "--model",
                str(pair[0]),
                "--adapter",
                str(adapter),
                "--benchmarks",
                "gsm8k,mmlu_stem",
                "--data-dir",
                str(SHARED_DATA),
                "--limit",
                "2",
                "--max-new-tokens",
                "12",
                "--out",
                str(out),
                "--name",
                "tuned",
            ]
        )
        == 0
    )
    base_rows = (eval_run / "gsm8k.jsonl").read_text().splitlines()
    tuned_rows = (out / "gsm8k.jsonl").read_text().splitlines()
    assert [json.loads(x)["completion"] for x in base_rows] != [json.loads(x)["completion"] for x in tuned_rows]
    capsys.readouterr()
    assert main(["compare", str(eval_run), str(out)]) == 0
    table = capsys.readouterr().out
    assert "| tuned |" in table and re.search(r"\([+-]\d+\.\d\)", table)


def test_grade_rescoring(tmp_path, capsys):
    path = tmp_path / "old.jsonl"
    rows = [
        {"id": 0, "completion": "so \\boxed{\\frac{1}{2}}", "gold": "0.5", "extracted": "?", "correct": False},
        {"id": 1, "completion": "The answer is 7", "gold": "8"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["grade", str(path), "--benchmark", "math"]) == 0
    graded = [json.loads(x) for x in path.read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, False]
    assert graded[0]["extracted"] == "\\frac{1}{2}" and graded[1]["extracted"] == "7"
    assert "1/2 correct" in capsys.readouterr().out


def test_eval_bad_input(pair, tmp_path, capsys):
    assert main(["eval", "--model", str(pair[0]), "--benchmarks", "gsm9k", "--out", str(tmp_path / "o")]) == 2
    assert "unknown benchmark 'gsm9k'" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                str(pair[0]),
                "--benchmarks",
                "gsm8k",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "test.jsonl does not exist" in capsys.readouterr().err
    bad = tmp_path / "gsm8k"
    bad.mkdir()
    (bad / "test.jsonl").write_text('{"question": "q"}\n')
    assert (
        main(
            [
                "eval",
                "--model",
                str(pair[0]),
                "--benchmarks",
                "gsm8k",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "test.jsonl:1: not a gsm8k record" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    path = tmp_path / "g.jsonl"
    path.write_text('{"completion": "x"}\n')
    assert main(["grade", str(path), "--benchmark", "gsm8k"]) == 2
    assert "g.jsonl:1: no 'gold' field" in capsys.readouterr().err
