import time

import pytest
from conftest import SHARED_DATA

from lightreasoner.evaluation.benchmarks import BENCHMARKS, grade_completion, load_items
from lightreasoner.evaluation.grading import extract_answer, extract_choice, is_equiv, normalize

needs_data = pytest.mark.skipif(not SHARED_DATA.exists(), reason="benchmark files of ../shared/data not present")


@needs_data
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_first_golds_grade_correct_against_themselves_and_wrong_against_others(name):
    bench = BENCHMARKS[name]
    items = load_items(name, SHARED_DATA, limit=20)
    assert len(items) == 20
    for i, it in enumerate(items):
        assert it.gold and it.question
        pred, ok = grade_completion(
            it.kind, f"Step by step... so the answer is \\boxed{{{it.gold}}}.", it.gold, bench.strip_units, it.multiple
        )
        assert ok, (name, i, it.gold, pred)
        other = next(o for o in items[i + 1 :] + items[:i] if normalize(o.gold) != normalize(it.gold))
        _, wrong = grade_completion(
            it.kind, f"The answer is \\boxed{{{other.gold}}}", it.gold, bench.strip_units, it.multiple
        )
        assert not wrong, (name, i, it.gold, other.gold)


@needs_data
def test_benchmark_questions_follow_the_toolkit_layout():
    svamp = load_items("svamp", SHARED_DATA, 1)[0]
    assert svamp.question.startswith("There are 87 oranges") and "How big is each group" in svamp.question
    asdiv = load_items("asdiv", SHARED_DATA, 1)[0]
    assert asdiv.gold == "9" and asdiv.question.endswith("How many apples are in the basket?")
    mmlu = load_items("mmlu_stem", SHARED_DATA, 1)[0]
    assert "\nAnswer Choices: (A) " in mmlu.question and " (D) " in mmlu.question and mmlu.kind == "choice"
    gsm = load_items("gsm8k", SHARED_DATA, 1)[0]
    assert gsm.gold == "18"
    olym = [it for it in load_items("olympiadbench", SHARED_DATA, 60) if it.multiple]
    assert olym and "$" not in olym[0].gold


TABLE = [
    # completion, gold, expected
    ("so the result is \\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("She pays \\boxed{\\$1,234.00} in total.", "1234", True),
    ("\\boxed{1,234}", "1234", True),
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{x=3}", "3", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    ("\\boxed{\\tfrac34}", "0.75", True),
    ("The angle is \\boxed{30^\\circ}", "30", True),
    ("\\boxed{[1, 3)}", "[1,3)", True),
    ("\\boxed{(1,3]}", "[1,3]", False),
    ("\\boxed{\\text{\\boxed{7}}}", "7", True),
    ("first \\boxed{4} then corrected: \\boxed{5}", "5", True),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\boxed{2\\pi}", "2\\pi", True),
    ("\\boxed{\\pi}", "3", False),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("The answer is 72.", "72", True),
    ("She has 5 apples and buys 10 more, so 15", "15", True),
    ("The total is 12 dollars.", "13", False),
    ("I am not sure.", "4", False),
    ("", "4", False),
    ("\\boxed{}", "4", False),
    ("\\boxed{18 \\text{ dollars}}", "18", True),
    ("\\boxed{-3}", "3", False),
    ("\\boxed{1.0001}", "1", True),  # toolkit relative tolerance 1e-4
    ("\\boxed{1.01}", "1", False),
]


@pytest.mark.parametrize("completion,gold,expected", TABLE)
def test_extraction_and_equivalence_table(completion, gold, expected):
    assert is_equiv(extract_answer(completion), normalize(gold)) is expected


def test_multiple_answers_are_order_free_but_complete():
    gold = normalize("(1,8,19), (2,7,13)")
    assert is_equiv(extract_answer("\\boxed{(2,7,13),(1,8,19)}"), gold, multiple=True)
    assert not is_equiv(extract_answer("\\boxed{(2,7,13)}"), gold, multiple=True)
    assert is_equiv(extract_answer("\\boxed{84, 69}"), normalize("69$,$84"), multiple=True)


@pytest.mark.parametrize(
    "completion,letter",
    [
        ("Thus the answer is \\boxed{\\text{(B)}}.", "B"),
        ("The answer is \\boxed{C}", "C"),
        ("The answer is (D) because ...", "D"),
        ("Option A is wrong; B is right", "B"),
        ("a cat, a dog", ""),
    ],
)
def test_choice_extraction(completion, letter):
    assert extract_choice(completion) == letter


def test_pathological_expression_does_not_hang():
    t0 = time.perf_counter()
    is_equiv("10^{10^{10^{10^{10}}}}", "10^{10^{10^{10^{11}}}}")
    assert time.perf_counter() - t0 < 60


def test_model_text_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"\\boxed{{__import__('pathlib').Path('{marker}').touch()}}"
    assert not is_equiv(extract_answer(payload), "1")
    assert not marker.exists()


@pytest.mark.parametrize(
    "case, completion, gold, kind, toolkit, strict",
    [
        ("a percentage x100 of the gold", "so \\boxed{50}", "0.5", "math", True, False),
        ("a percentage /100 of the gold", "so \\boxed{0.5}", "50", "math", True, False),
        ("an integer 1e-4 off", "so \\boxed{1000001}", "1000000", "math", True, False),
        ("the right integer", "so \\boxed{1000000}", "1000000", "math", True, True),
        ("a decimal written as a fraction", "so \\boxed{\\frac{1}{4}}", "0.25", "math", True, True),
        ("a unit word after the number", "so \\boxed{5 \\text{ apples}}", "5", "math", True, True),
        ("scientific notation in LaTeX", "so \\boxed{3\\times10^{5}}", "300000", "math", True, True),
        ("a reordered set", "so \\boxed{\\{2,1\\}}", "\\{1,2\\}", "math", True, True),
        (
            "an equivalent trigonometric form",
            "so \\boxed{\\frac{\\sqrt{2}}{2}}",
            "\\sin\\frac{\\pi}{4}",
            "math",
            True,
            True,
        ),
        ("a list is not a thousands number", "so \\boxed{1,2}", "12", "math", False, False),
        ("the article 'A' taken as a choice", "A train is faster. Hmm.", "A", "choice", True, False),
        ("a choice stated as the answer", "A train is faster. The answer is (A).", "A", "choice", True, True),
    ],
)
def test_toolkit_and_strict_graders(case, completion, gold, kind, toolkit, strict):
    from lightreasoner.evaluation.benchmarks import grade_completion
    from lightreasoner.evaluation.grading import normalize

    g = normalize(gold) if kind == "math" else gold
    assert grade_completion(kind, completion, g)[1] is toolkit, case
    assert grade_completion(kind, completion, g, strict=True)[1] is strict, case
