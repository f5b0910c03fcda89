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
        assert grade_completion(
            it.kind, f"so the answer is \\boxed{{{it.gold}}}.", it.gold, bench.strip_units, it.multiple, strict=True
        )[1], (name, i, it.gold)
        # the toolkit takes f(n)=n for "f(n)=n, g(n)=1" (sympy stops reading at the comma): strict only
        other = next(o for o in items[i + 1 :] + items[:i] if normalize(o.gold) != normalize(it.gold))
        _, wrong = grade_completion(
            it.kind, f"The answer is \\boxed{{{other.gold}}}", it.gold, bench.strip_units, it.multiple, strict=True
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


def test_strict_multiple_answers_are_order_free_but_complete():
    gold = normalize("(1,8,19), (2,7,13)")
    assert is_equiv(extract_answer("\\boxed{(2,7,13),(1,8,19)}"), gold, multiple=True, strict=True)
    assert not is_equiv(extract_answer("\\boxed{(2,7,13)}"), gold, multiple=True, strict=True)
    assert is_equiv(extract_answer("\\boxed{84, 69}"), normalize("69$,$84"), multiple=True, strict=True)
    assert not is_equiv(extract_answer("\\boxed{(2,7,13),(1,8,19)}"), gold, multiple=True)  # the toolkit: in order


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
    for strict in (False, True):
        assert not is_equiv(extract_answer(payload, strict=strict), "1", strict=strict)
        assert not is_equiv(extract_answer(payload, strict=strict), "x", strict=strict)  # sympy's N/equals take text
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
        ("a half-open interval for a closed one", "so \\boxed{(1,3]}", "[1,3]", "math", True, False),
        ("a list is not a thousands number", "so \\boxed{1,2}", "12", "math", True, False),
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


def _record(name: str, gold: str) -> dict:
    """A one-problem record of the benchmark whose gold answer is ``gold``."""
    if name == "math500":
        return {"problem": "Find it.", "solution": f"So it is \\boxed{{{gold}}}.", "answer": gold}
    if name == "mmlu_stem":
        return {"question": "Which?", "choices": ["w", "x", "y", "z"], "answer": "ABCD".index(gold)}
    if name == "gsm8k":
        return {"question": "How many?", "answer": f"... #### {gold}"}
    if name == "olympiadbench":
        return {"question": "Find all.", "final_answer": [f"${gold}$"], "is_multiple_answer": "," in gold}
    return {"problem": "Find it.", "solution": f"So it is \\boxed{{{gold}}}."}


# benchmark, gold as the file writes it, completion, the toolkit's verdict, the strict verdict
NAMED_KINDS = [
    # multiple-choice letters in prose: the toolkit takes the last free-standing a-e/A-E, articles included
    ("mmlu_stem", "C", "The velocity is constant, so I pick C as a result.", False, True),
    ("mmlu_stem", "C", "Option C is right, since a mass on a spring oscillates.", False, True),
    ("mmlu_stem", "A", "A ball falls freely, which is what option C says.", False, False),
    ("mmlu_stem", "C", "A ball falls freely. The answer is (C).", True, True),
    ("mmlu_stem", "B", "The correct choice is b.", True, True),
    # unit words after a number: "dollars" is not in the toolkit's unit list
    ("gsm8k", "162", "So he pays \\boxed{162 dollars}.", False, True),
    ("gsm8k", "162", "The answer is 162 dollars.", False, True),
    ("gsm8k", "162", "So in total he pays 162 dollars.", True, True),
    ("gsm8k", "162", "So he pays \\boxed{162 \\text{ dollars}}.", True, True),
    ("gsm8k", "162", "So he pays \\boxed{\\$162}.", True, True),
    # reordered tuples: ordered for the toolkit; order-free when they are several answers
    ("olympiadbench", "(1,8,19), (2,7,13)", "\\boxed{(2,7,13), (1,8,19)}", False, True),
    ("olympiadbench", "(1,8,19), (2,7,13)", "\\boxed{(1,8,19), (2,7,13)}", True, True),
    ("math", "(1,2)", "\\boxed{(2,1)}", False, False),
    # rewritten trigonometry: spaces go before sympy reads \tan x, leaving the symbol "tanx"
    ("math", "\\cot x", "\\boxed{\\frac{1}{\\tan x}}", False, True),
    ("math", "\\cot(x)", "\\boxed{\\frac{1}{\\tan(x)}}", True, True),
    ("math", "\\sin\\frac{\\pi}{4}", "\\boxed{\\frac{\\sqrt{2}}{2}}", False, True),
    # lists written with "and": the toolkit drops "and" and the spaces and reads a number
    ("math", "11, 13", "The primes are \\boxed{11 and 13}.", True, True),
    ("math", "11, 13", "The primes are \\boxed{13 and 11}.", False, True),
    ("math", "11, 13", "The primes are \\boxed{13, 11}.", False, True),
    ("math", "1113", "It is \\boxed{11 and 13}.", True, False),
    # labelled answers
    ("math", "-3, 0", "\\boxed{b=-3, c=0}", False, True),
    ("math", "b=-3, c=0", "\\boxed{c=0, b=-3}", False, True),
    ("math", "b=-3, c=0", "\\boxed{-3, 0}", False, True),
    ("math", "b=-3, c=0", "\\boxed{b=-3, c=1}", True, False),  # "c" is a unit to it; sympy stops at the comma
    # right-hand sides without the left
    ("olympiadbench", "f(x)=x+1", "\\boxed{x+1}", False, True),
    ("olympiadbench", "x+1", "\\boxed{f(x)=x+1}", False, True),
    ("olympiadbench", "f(x)=x+1", "\\boxed{x+2}", False, False),
    # more of the toolkit's errors
    ("math", "(1,3]", "\\boxed{[1,3]}", True, False),  # brackets compared element by element only
    ("math", "0.5", "\\boxed{50}", True, False),  # x100 forgiven as a percentage
    ("math", "\\frac{1}{2}, 3", "\\boxed{\\frac{1}{2}, 4}", True, False),  # sympy stops reading at the comma
    ("math", "\\{1,2\\}", "\\boxed{\\{2,1\\}}", True, True),
    ("math", "4", "The answer is four.", True, True),
    ("math", "19", "Therefore, the final answer is $\\boxed{19}$. I hope it is correct.", False, True),
    ("math", "19", "\\boxed{0.19}", True, False),
    ("gsm8k", "19", "\\boxed{19.0019}", True, False),
    ("math", "1058", "\\boxed{1,058.00}", True, True),
    ("math", "\\frac{1}{z}", "\\boxed{\\text{\\frac{1}{z}}}", True, True),
    ("math500", "\\left( \\frac{3}{2}, -13 \\right)", "\\boxed{\\frac{3}{2}, -13}", True, True),
    ("math", "A", "So the graph is \\boxed{\\text{A}}.", True, True),
    ("math", "A", "\\boxed{k = \\text{A}}", True, True),
]


@pytest.mark.parametrize("name, gold, completion, toolkit, strict", NAMED_KINDS)
def test_named_answer_kinds(name, gold, completion, toolkit, strict):
    from lightreasoner.evaluation.grading import grade

    bench = BENCHMARKS[name]
    item = bench.item(_record(name, gold), 0)
    assert grade(completion, item.gold, item.kind, bench.strip_units, item.multiple)[1] is toolkit
    assert grade(completion, item.gold, item.kind, bench.strip_units, item.multiple, strict=True)[1] is strict


def test_named_answer_kinds_are_the_toolkits_verdicts():
    pytest.importorskip("word2number", reason="the toolkit oracle needs word2number (pip install -e .[dev])")
    from toolkit_reference import toolkit_score

    for name, gold, completion, toolkit, _ in NAMED_KINDS:
        _, _, verdict = toolkit_score(completion, _record(name, gold), "math" if name == "math500" else name)
        assert verdict in (toolkit, None), (name, gold, completion)  # None: it ran out of time (False)


def test_normalize_is_the_toolkits_strip_string():
    pytest.importorskip("word2number", reason="the toolkit oracle needs word2number (pip install -e .[dev])")
    from toolkit_reference.parser import strip_string

    answers = [
        "b - 1", "440\\text{ cm}^2", "\\frac{h^2}{m}", "(a+5)(b+2)", "1 \\pm \\sqrt{19}", "\\text{east}", "t(0,4]",
        "f(n)=n$, $g(n)=1", "\\dfrac12", "\\frac1{72}", "3/4", "\\sqrt2/2", "0.50", ".5", "50\\%", "x \\in [1, 2)",
        "\\left( 3, \\frac{\\pi}{2} \\right)", "\\begin{array}{cc} 1 & 2 \\end{array}", "10^\\circ", "\\$1,234.00",
        "one hundred and five", "twenty-one apples", "five point two", "point", "007", "two million three thousand",
        "x - one", "k = 5", "\\emptyset", "(-\\infty,\\infty)", "infinity", "2j", "\\mbox{cm} 3", "\\text{(C)}",
        "\\{1,2\\}", "5 \\text{ apples}", "162 dollars", "11 and 13", "\\mathbf{v}", "3 \\mathrm{~m}", "q . 5",
    ]  # fmt: skip
    for answer in answers:
        for strip_units in (True, False):
            assert normalize(answer, strip_units) == strip_string(answer, skip_unit=not strip_units), answer


def test_word_numbers_are_read_as_word2number_reads_them():
    w2n = pytest.importorskip("word2number.w2n")
    from lightreasoner.evaluation.grading import word_to_num

    for text in [
        "seven", "twenty one", "one hundred and five", "two million three thousand four hundred", "five point two",
        "point", "nine hundred ninety nine thousand", "one two three four five", "x - one", "12", "thousand",
        "three billion", "seventy point zero five", "twenty-one apples", "one point two three x",
    ]:  # fmt: skip
        assert word_to_num(text) == w2n.word_to_num(text), text
    for text in ["apples", "thousand thousand", "thousand million", "\\frac{1}{2}"]:
        with pytest.raises(ValueError):
            w2n.word_to_num(text)
        with pytest.raises(ValueError):
            word_to_num(text)


def test_parse_expr_stand_in_gives_sympys_results_without_eval(tmp_path):
    from sympy.parsing.sympy_parser import parse_expr

    from lightreasoner.evaluation.grading.safe_eval import parse_expr_safely

    for text in ["(1,2)", "{1,2}", "[1, x]", "x**2+2*x", "sqrt(2)/2", "5!", "2j", "x<3", "abs(-2)", "max(1,2)", "E+pi"]:
        assert parse_expr_safely(text) == parse_expr(text), text
    marker = tmp_path / "pwned"
    for text in [
        f"__import__('pathlib').Path('{marker}').touch()",
        f"open('{marker}', 'w')",
        "eval('1')",
        "sympify('x')",
        "Symbol.__class__",
        "S('x')",
        "10**10**10",
        "[1]*10**9",
        "1000000!",
    ]:
        t0 = time.perf_counter()
        with pytest.raises(Exception):  # noqa: B017 (any refusal will do)
            parse_expr_safely(text)
        assert time.perf_counter() - t0 < 5, text
    assert not marker.exists()


def test_toolkit_comparison_is_time_limited():
    from lightreasoner.evaluation.grading import toolkit_verdict

    assert toolkit_verdict("\\frac{x^2-1}{x-1}", "x+1")
    t0 = time.perf_counter()
    assert not toolkit_verdict("\\frac{x^2-1}{x-1}", "x+1", timeout=1e-4)  # the toolkit: False when out of time
    assert time.perf_counter() - t0 < 5


def test_grade_command_takes_a_grader(tmp_path, capsys):
    import json

    from lightreasoner.cli import main

    path = tmp_path / "old.jsonl"
    rows = [{"completion": "He pays \\boxed{162 dollars}.", "gold": "162"}, {"completion": "\\boxed{7}", "gold": "7"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["grade", str(path), "--benchmark", "gsm8k", "--out", str(tmp_path / "t.jsonl")]) == 0
    assert "1/2 correct" in capsys.readouterr().out
    assert main(["grade", str(path), "--benchmark", "gsm8k", "--grader", "strict"]) == 0
    assert "2/2 correct" in capsys.readouterr().out
    graded = [json.loads(x) for x in path.read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, True] and graded[0]["extracted"] == "162"
    toolkit = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in toolkit] == [False, True] and toolkit[0]["extracted"] == "162dollars"
