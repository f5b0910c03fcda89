import json
import os
import re

import pytest
import tiny
from conftest import SHARED_DATA

from lightreasoner.cli import main
from lightreasoner.config import EvalConfig
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation.benchmarks import PAPER_BENCHMARKS
from lightreasoner.evaluation.runner import evaluate

ALL = ",".join([*PAPER_BENCHMARKS, "math500"])


def eval_args(pair, out, *extra, benchmarks=ALL):
    return [
        "eval",
        "-q",
        "--model",
        str(pair[0]),
        "--benchmarks",
        benchmarks,
        "--data-dir",
        str(SHARED_DATA),
        "--limit",
        "2",
        "--max-new-tokens",
        "12",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def eval_run(pair, tmp_path_factory):
    if not SHARED_DATA.exists():
        pytest.skip("benchmark files of ../shared/data not present")
    out = tmp_path_factory.mktemp("eval") / "base"
    code = main(eval_args(pair, out, "--batch-size", "3"))
    assert code == 0
    return out


@pytest.mark.slow
def test_end_to_end_eval_writes_per_problem_files_summary_and_table(eval_run):
    summary = json.loads((eval_run / "summary.json").read_text())
    assert set(summary["results"]) == set(ALL.split(","))
    for name, res in summary["results"].items():
        rows = [json.loads(x) for x in (eval_run / f"{name}.jsonl").read_text().splitlines()]
        assert res["n"] == len(rows) == 2
        assert res["correct"] == sum(r["correct"] for r in rows)
        for r in rows:
            assert {"id", "problem", "gold", "completion", "extracted", "correct"} <= r.keys()
            assert r["correct"] == r["correct_toolkit"] and isinstance(r["correct_strict"], bool)
        assert res["accuracy_toolkit"] == res["accuracy"] and res["grader"] == "toolkit"
        assert res["accuracy_strict"] == 100 * sum(r["correct_strict"] for r in rows) / len(rows)
    table = (eval_run / "results.md").read_text()
    assert table.startswith("| Model | GSM8K | MATH | SVAMP | ASDiv | Minerva Math | Olympiad Bench | MMLU STEM |")
    assert "AVG." in table and summary["name"] in table


@pytest.mark.slow
def test_rerun_resumes_without_generating_again(pair, eval_run, capsys):
    files = {p.name: p.read_text() for p in eval_run.glob("*.jsonl")}
    # cut the last problem of one benchmark and tear a line: the rerun must redo exactly that one
    gsm = eval_run / "gsm8k.jsonl"
    first = gsm.read_text().splitlines()[0]
    gsm.write_text(first + "\n" + '{"id": "1", "probl')
    assert main(eval_args(pair, eval_run)) == 0
    after = {p.name: p.read_text() for p in eval_run.glob("*.jsonl")}
    assert after == files


@pytest.mark.slow
def test_adapter_and_compare(pair, eval_run, tmp_path, capsys):

    peft_model = tiny.random_lora(pair[0], std=0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    out = tmp_path / "tuned"
    args = eval_args(pair, out, "--adapter", str(adapter), "--name", "tuned", benchmarks="gsm8k,mmlu_stem")
    assert main(args) == 0
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
    def run(*args):
        return main(["eval", "--model", str(pair[0]), "--out", str(tmp_path / "o"), *args])

    assert run("--benchmarks", "gsm9k") == 2
    assert "unknown benchmark 'gsm9k'" in capsys.readouterr().err
    assert run("--benchmarks", "gsm8k", "--data-dir", str(tmp_path)) == 2
    assert "test.jsonl does not exist" in capsys.readouterr().err
    bad = tmp_path / "gsm8k"
    bad.mkdir()
    (bad / "test.jsonl").write_text('{"question": "q"}\n')
    assert run("--benchmarks", "gsm8k", "--data-dir", str(tmp_path)) == 2
    assert "test.jsonl:1: not a gsm8k record" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    path = tmp_path / "g.jsonl"
    path.write_text('{"completion": "x"}\n')
    assert main(["grade", str(path), "--benchmark", "gsm8k"]) == 2
    assert "g.jsonl:1: no 'gold' field" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="benchmark files of ../shared/data not present")
@pytest.mark.slow
def test_eval_completions_are_the_plain_argmax_whatever_the_checkpoint_says(pair, tmp_path):
    """A checkpoint asking for sampling and penalties is still decoded by pure argmax."""
    import torch
    from test_decoding import argmax_decode

    from lightreasoner.models import load_model, load_tokenizer
    from lightreasoner.prompts import build_prompt

    hostile = tiny.make_hostile_copy(pair[0], tmp_path / "hostile")
    cfg = EvalConfig(
        model=str(hostile),
        benchmarks="gsm8k",
        data_dir=str(SHARED_DATA),
        limit=5,
        max_new_tokens=12,
        batch_size=2,
        dtype="float32",
        out=str(tmp_path / "o"),
    )
    summary = evaluate(cfg, show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "o" / "gsm8k.jsonl").read_text().splitlines()]
    tok, model = load_tokenizer(str(hostile)), load_model(str(hostile), torch.float32)
    stops = {0, tok.convert_tokens_to_ids("<|im_end|>")}
    for row in rows:
        prompt = tok(build_prompt(tok, row["problem"], cfg.system_prompt), add_special_tokens=False)["input_ids"]
        ref = argmax_decode(model, prompt, 12, stops)
        assert row["completion"] == tok.decode([t for t in ref if t not in stops], skip_special_tokens=True)
        assert row["tokens"] == len(ref) and row["cut_off"] == (ref[-1] not in stops)
    res = summary["results"]["gsm8k"]
    assert res["n"] == 5 and res["cut_off"] == sum(r["cut_off"] for r in rows)
    assert res["cut_off_share"] == res["cut_off"] / 5


def test_vllm_backend_without_vllm_is_a_clear_error(pair, tmp_path, capsys):
    from lightreasoner.generation.vllm import vllm_available

    if vllm_available():
        pytest.skip("vLLM is installed here")
    code = main(
        [
            "eval",
            "--model",
            str(pair[0]),
            "--benchmarks",
            "reasoning-gym:gsm_symbolic",
            "--limit",
            "1",
            "--backend",
            "vllm",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "vLLM is not installed" in capsys.readouterr().err


def test_vllm_engine_settings_per_process(pair, tmp_path, monkeypatch, stand_in_vllm):
    """What the generator asks of vLLM (a stand-in module here), one engine per process and GPU."""
    from lightreasoner.evaluation.runner import eval_request
    from lightreasoner.generation import check_options
    from lightreasoner.generation.vllm import VLLMGenerator, rank_gpu
    from lightreasoner.models import end_token_ids, load_model, load_tokenizer

    adapter = tmp_path / "adapter"
    tiny.random_lora(pair[0], std=0.1).save_pretrained(str(adapter))  # r = 8
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    tok = load_tokenizer(str(pair[0]))
    gen = VLLMGenerator(str(pair[0]), tok, 64, "auto", str(adapter), gpu_memory_utilization=0.5)
    (_, _, made) = stand_in_vllm[0]
    assert made["cuda"] == "3" and made["generation_config"] == "vllm" and made["max_lora_rank"] == 8
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # put back once the engine has started
    assert made["gpu_memory_utilization"] == 0.5 and made["tensor_parallel_size"] == 1 and made["enable_lora"]
    assert gen.params["temperature"] == 0.0 and gen.params["repetition_penalty"] == 1.0
    eos = load_model(str(pair[0])).generation_config.eos_token_id  # where the transformers backend stops
    assert gen.stops == end_token_ids(eos, tok, chat_ends=True) == gen.params["stop_token_ids"]
    gen.close()
    assert stand_in_vllm[-1] == ("shut down",)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # a job given 4 of 8 GPUs: rank 3 has GPU 7
    assert rank_gpu() == "7"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(LightReasonerError, match="names 2 GPUs"):
        rank_gpu()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(LightReasonerError, match="VLLM_ENABLE_V1_MULTIPROCESSING"):
        VLLMGenerator(str(pair[0]), tok, 64, "auto")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    with pytest.raises(LightReasonerError, match="tensor parallelism"):
        VLLMGenerator(str(pair[0]), tok, 64, "auto", tensor_parallel_size=2)
    with pytest.raises(LightReasonerError, match="--max-lora-rank"):
        check_options(eval_request(EvalConfig(model="m", out="o", max_lora_rank=12)))
