import pytest

from conftest import shared_file
from dot.tasks import format_example, get_task
from dot.tasks.gsm8k import normalise_number
from dot.tasks.multiplication import parse_operands, render


def test_render_examples_from_spec():
    assert render(148760, 6) == "0 6 7 8 4 1"
    assert render(5766984, 8) == "4 8 9 6 6 7 5 0"


def test_worked_example_3719_times_3349():
    expected = ("9 1 7 3 * 9 4 3 3||1 7 4 3 3 + 0 6 7 8 4 1 ( 1 3 2 2 8 1 ) + "
                "0 0 7 5 1 1 1 ( 1 3 9 7 9 2 1 ) + 0 0 0 7 5 1 1 1 #### 1 3 9 4 5 4 2 1")
    assert format_example(3719, 3349, 4, 4) == expected


@pytest.mark.parametrize("name,digits", [("4x4", 4), ("5x5", 5)])
def test_generator_reproduces_every_shared_line(name, digits):
    lines = shared_file(name, "valid.txt").read_text().split("\n")[:-1]
    assert len(lines) == 1000
    for line in lines:
        a, b = parse_operands(line.split("||")[0])
        assert format_example(a, b, digits, digits) == line


def test_task_names_and_aliases():
    assert get_task("4x4").name == get_task("4by4").name == "4by4"
    assert get_task("5x5").data_dir == "5by5"
    assert (get_task("mult3x2").a_digits, get_task("mult3x2").b_digits) == (3, 2)
    with pytest.raises(ValueError, match="unknown task 'sudoku'"):
        get_task("sudoku")


def test_multiplication_thoughts_and_extraction():
    task = get_task("4by4")
    line = format_example(3719, 3349, 4, 4)
    ex = task.make_example(0, *line.split("||"))
    assert ex.prompt == "9 1 7 3 * 9 4 3 3 = "
    assert ex.thoughts == ("1 7 4 3 3 + ", "0 6 7 8 4 1 ( 1 3 2 2 8 1 ) + ",
                           "0 0 7 5 1 1 1 ( 1 3 9 7 9 2 1 ) + ", "0 0 0 7 5 1 1 1 = ",
                           "1 3 9 4 5 4 2 1")
    assert task.extract_answer("".join(ex.thoughts)) == task.gold_answer(ex) == "1 3 9 4 5 4 2 1"
    assert task.extract_answer("1 2 + 3 = + 4 5 +") == "4 5"
    assert [task.is_final_thought(t) for t in ex.thoughts] == [False] * 4 + [True]


def test_gsm8k_thoughts_rebuild_target():
    task = get_task("gsm8k")
    ex = task.make_example(0, "q?", "<<2*3=6>> <<6+1=7>> <<7-2=5>> #### 5")
    assert ex.thoughts == (" <<2*3=6>>", " <<6+1=7>>", " <<7-2=5>> #### 5")
    assert "".join(ex.thoughts) == " " + ex.target
    assert task.make_example(1, "q?", " #### 26").thoughts == ("  #### 26",)


@pytest.mark.parametrize("text,expected", [
    ("1,234", "1234"), ("+5", "5"), ("7.", "7"), ("-10", "-10"), (" 3.50 ", "3.5"),
    ("2.0", "2"), ("007", "7"), ("-0", "0"), ("abc", "abc"), ("1,000,000", "1000000"),
])
def test_normalise_number(text, expected):
    assert normalise_number(text) == expected


def test_gsm8k_extraction_edge_cases():
    task = get_task("gsm8k")
    assert task.extract_answer(" <<5-8=-3>> #### -3") == "-3"
    assert task.extract_answer(" <<2*1000=2000>> #### 2,000") == "2000"
    assert task.extract_answer(" <<1+1=2>> #### +2.") == "2"
    assert task.extract_answer(" <<1+1=2>>") == "<<1+1=2>>"  # no answer marker: no number
    ex = task.make_example(0, "q", "<<2*1000=2000>> #### 2,000")
    assert task.gold_answer(ex) == "2000"
