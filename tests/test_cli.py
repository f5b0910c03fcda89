"""The command line: options, YAML configs, and every bad input named in the docs."""

import json
from pathlib import Path

import pytest
import torch

from lightreasoner.cli import main


def sample_args(pair, data, out, *extra):
    e, a = pair
    return [
        "sample",
        "-q",
        "--expert",
        str(e),
        "--amateur",
        str(a),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-new-tokens",
        "12",
        *extra,
    ]


def assert_failed_cleanly(code, capsys, out: Path, *patterns):
    err = capsys.readouterr().err
    assert code != 0
    for p in patterns:
        assert p in err, err
    assert not out.exists()
    assert not list(out.parent.glob(out.name + ".*")), list(out.parent.iterdir())


def test_check_pair_ok_and_refused(pair, other_tokenizer_model, capsys):
    e, a = pair
    assert main(["check-pair", "--expert", str(e), "--amateur", str(a)]) == 0
    assert "OK: the pair can be contrasted" in capsys.readouterr().out
    assert main(["check-pair", "--expert", str(e), "--amateur", str(other_tokenizer_model)]) == 1
    out = capsys.readouterr().out
    assert "REFUSED" in out and "map to different tokens" in out


def test_mismatched_tokenizers_are_refused_before_generation(
    pair, other_tokenizer_model, problems_file, tmp_path, capsys
):
    out = tmp_path / "s.jsonl"
    code = main(sample_args((pair[0], other_tokenizer_model), problems_file, out))
    assert_failed_cleanly(code, capsys, out, "tokenizers disagree")


def test_malformed_jsonl_names_file_and_line(pair, problems_file, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(problems_file.read_text().splitlines()[0] + "\n" + '{"question": "unterminated\n')
    out = tmp_path / "s.jsonl"
    assert_failed_cleanly(main(sample_args(pair, data, out)), capsys, out, f"{data}:2: not valid JSON")


def test_missing_question_field(pair, tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"problem": "1+1?"}) + "\n")
    out = tmp_path / "s.jsonl"
    assert_failed_cleanly(main(sample_args(pair, data, out)), capsys, out, f"{data}:1: no 'question' field")
    assert main(sample_args(pair, data, out, "--question-field", "problem", "--beta=-inf")) == 0
    assert out.exists()


def test_no_problems(pair, tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    out = tmp_path / "s.jsonl"
    assert_failed_cleanly(main(sample_args(pair, data, out)), capsys, out, "no problems found")


def test_beta_too_high_writes_nothing(pair, problems_file, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    code = main(sample_args(pair, problems_file, out, "--beta", "1000", "--max-problems", "2"))
    assert_failed_cleanly(code, capsys, out, "no step reached KL >= beta", "Lower --beta")


def test_missing_model_path(pair, problems_file, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    code = main(sample_args((tmp_path / "nope", pair[1]), problems_file, out))
    assert_failed_cleanly(code, capsys, out, "no such directory or file")


def test_pickle_weights_refused_without_flag(pair, problems_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    pickled = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(str(pair[0]))
    pickled.mkdir()
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    for f in Path(pair[0]).glob("tokenizer*"):
        (pickled / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "s.jsonl"
    code = main(sample_args((pickled, pair[1]), problems_file, out))
    assert_failed_cleanly(code, capsys, out, "pickle", "--allow-pickle")


def test_yaml_config_and_flag_precedence(pair, problems_file, tmp_path, capsys):
    e, a = pair
    out = tmp_path / "s.jsonl"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"sample:\n  expert: {e}\n  amateur: {a}\n  data: {problems_file}\n  out: {out}\n"
        "  max_new_tokens: 10\n  max_problems: 2\n  beta: 100.0\n"
    )
    assert main(["sample", "-q", "--config", str(cfg), "--beta", "0.0"]) == 0  # the flag wins over the file
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["problems"] == 2 and summary["config"]["max_new_tokens"] == 10
    assert summary["config"]["beta"] == 0.0


def test_yaml_errors_name_the_file(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sample:\n  betta: 0.4\n")
    assert main(["sample", "--config", str(cfg)]) == 2
    assert "unknown option 'betta'" in capsys.readouterr().err
    cfg.write_text("beta: [unclosed\n")
    assert main(["sample", "--config", str(cfg)]) == 2
    assert f"{cfg}:" in capsys.readouterr().err
    cfg.write_text("max_new_tokens: lots\n")
    assert main(["sample", "--config", str(cfg)]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_missing_required_option(capsys):
    assert main(["train", "--model", "x"]) == 2
    assert "--samples" in capsys.readouterr().err


def test_bad_samples_file_for_training(pair, tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"prompt_id": "q"}\n')
    out = tmp_path / "adapter"
    code = main(["train", "--model", str(pair[0]), "--samples", str(samples), "--output-dir", str(out)])
    assert_failed_cleanly(code, capsys, out, f"{samples}:1: not a soft-label record")


def test_bad_target_modules(pair, tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    rec = {
        "prompt_id": "q",
        "step": 1,
        "prefix": "a",
        "tokens": ["b"],
        "token_ids": [5],
        "weights": [1.0],
        "kl_divergence": 1.0,
    }
    samples.write_text(json.dumps(rec) + "\n")
    code = main(
        [
            "train",
            "-q",
            "--model",
            str(pair[0]),
            "--samples",
            str(samples),
            "--output-dir",
            str(tmp_path / "a"),
            "--target-modules",
            "nonexistent_proj",
        ]
    )
    assert code == 2 and "--target-modules" in capsys.readouterr().err


@pytest.mark.slow
def test_train_and_merge_commands(pair, problems_file, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(sample_args(pair, problems_file, out, "--max-problems", "2")) == 0
    adapter = tmp_path / "adapter"
    assert (
        main(
            [
                "train",
                "-q",
                "--model",
                str(pair[0]),
                "--samples",
                str(out),
                "--output-dir",
                str(adapter),
                "--max-steps",
                "2",
                "--no-pack",
            ]
        )
        == 0
    )
    assert json.loads((adapter / "train_summary.json").read_text())["packed"] is False
    merged = tmp_path / "merged"
    assert main(["merge", "--base", str(pair[0]), "--adapter", str(adapter), "--out", str(merged)]) == 0
    assert (merged / "config.json").exists()
    assert main(["merge", "--base", str(pair[0]), "--adapter", str(adapter), "--out", str(merged)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_unknown_hub_dataset_is_a_clear_error(pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "s.jsonl"
    code = main(sample_args(pair, "no-such-org/no-such-dataset", out))
    assert_failed_cleanly(code, capsys, out, "cannot load it as a Hugging Face dataset")


def test_run_help_shows_the_default_experiments_values(capsys):
    """``run`` without --config runs configs/default.yaml, so its help shows that file's values."""
    from lightreasoner.cli import build_parser
    from lightreasoner.pipeline import default_config

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    default = default_config()
    for key in ("data", "max_problems", "eval_limit", "eval_max_new_tokens"):
        assert f"(default: {default[key]})" in text, key
    assert "(default: reasoning-gym:gsm_symbolic)" not in text  # the dataclass's, which run does not use
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--help"])  # sample keeps its dataclass defaults
    assert "hub dataset name[:config] (required)" in " ".join(capsys.readouterr().out.split())
