import pytest

from dot.evaluate import result_name
from dot.scoring import majority_vote, sc_table


def test_vote_majority_and_tie_break():
    assert majority_vote(["3", "5", "5"]) == "5"
    assert majority_vote(["3", "5", "5", "3"]) == "3"  # tie: the answer seen first wins
    assert majority_vote(["", "", "7"]) == "7"  # empty extractions never outvote an answer
    assert majority_vote(["", ""]) == ""
    with pytest.raises(ValueError):
        majority_vote([])


def test_sc_table_by_hand():
    items = [("5", ["5", "3", "3", "5", "5"]),   # @1 ok, @2 ok (tie -> 5), @3 no, @4 ok, @5 ok
             ("2", ["1", "2", "2", "1", "1"]),   # @1 no, @2 no (tie -> 1), @3 ok, @4 no, @5 no
             ("9", ["9", "9", "0", "0", "0"])]   # ok, ok, ok, ok (tie -> 9), no
    assert sc_table(items, 5) == {1: 2 / 3, 2: 2 / 3, 3: 2 / 3, 4: 2 / 3, 5: 1 / 3}


def test_result_name_orders_flags_and_marks_partial_and_multirun_files():
    assert result_name("test", 8) == "test-T8"
    assert result_name("test", 64, multipass=True) == "test-T64-mp"
    # options sorted by key, boolean flags bare, values after '='
    assert (result_name("valid", 4, options={"temperature": 0.5, "dpm_solver": True}, runs=5, first=10)
            == "valid-T4-dpm_solver-temperature=0.5-runs5-first10")
