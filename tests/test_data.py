"""The packaged GSM8K: byte-identical to the source, loaded by name, disjoint splits."""

import gzip
import hashlib

import pytest
from conftest import SHARED_DATA

from lightreasoner.data import load_problems, packaged_path
from lightreasoner.evaluation.benchmarks import load_items

SHA256 = {  # of the uncompressed files of openai/grade-school-math (packaged/gsm8k/README.md)
    "gsm8k:train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "gsm8k:test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
}


@pytest.mark.parametrize("name", sorted(SHA256))
def test_packaged_gsm8k_is_byte_identical_to_the_source(name):
    data = gzip.decompress(packaged_path(name).read_bytes())
    assert hashlib.sha256(data).hexdigest() == SHA256[name]
    assert (packaged_path(name).parent / "LICENSE").read_text().startswith("MIT License")
    local = SHARED_DATA / "gsm8k" / f"{name.split(':')[1]}.jsonl"
    if local.exists():
        assert local.read_bytes() == data


def test_gsm8k_by_name_offline():
    train, test = load_problems("gsm8k:train"), load_problems("gsm8k:test")
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0].answer.endswith("#### 72") and train[0].index == 0
    assert [p.question for p in load_problems("gsm8k:train", max_problems=5)] == [p.question for p in train[:5]]
    items = load_items("gsm8k", None, limit=3)  # no --data-dir, no hub: the packaged test split
    assert [it.question for it in items] == [p.question.strip() for p in test[:3]] and items[0].gold == "18"
    assert not {p.question for p in train} & {p.question for p in test}


def test_default_run_checks_its_splits_are_disjoint():
    from lightreasoner.pipeline import check_disjoint, load_run_config

    cfg = load_run_config(None, {}, quick=False)
    assert (cfg.data, cfg.benchmarks) == ("gsm8k:train", "gsm8k")
    assert check_disjoint(cfg) == cfg.eval_limit
