"""Synthetic tasks: hand-made right and wrong answers, determinism, split hygiene, d1 loaders."""
from __future__ import annotations

import pytest

from harness.models.tiny import CharTokenizer
from harness.registry import TASKS
from harness.tasks import data as data_mod
from harness.tasks.countdown3 import evaluate, solve
from harness.tasks.sudoku4 import all_grids, is_valid_solution
from harness.types import HarnessError, Item

SMALL = {"n_train": 300, "n_test": 200}


def build(name: str, **params):
    return TASKS.build(name, {**SMALL, **params})


def have(relpath: str) -> bool:
    return (data_mod.data_dir() / relpath).is_file()


# -- addition ---------------------------------------------------------------------------------
def test_addition_hand_made_answers():
    task = build("addition")
    item = Item(id="x", prompt="123+456=", reference="579", meta={"a": 123, "b": 456})
    assert [task.score(item, c) for c in ("579", "0579", " 579 ", "578", "", "5 79")] == [1, 1, 1, 0, 0, 0]


# -- sudoku4 ----------------------------------------------------------------------------------
PUZZLE = "3102200002100320"  # d1 row 0
SOLUTION = "3142243142131324"
# Swapping the last two rows of a valid grid gives another valid grid; blanking the cells where
# they differ leaves a puzzle with (at least) both as answers.
GRID_A = "1234341221434321"
GRID_B = "1234341243212143"


def sudoku_item(puzzle: str, solution: str) -> Item:
    return Item(id="x", prompt=puzzle + "=", reference=solution, meta={"puzzle": puzzle, "solution": solution})


def test_sudoku4_hand_made_answers():
    task = build("sudoku4")
    item = sudoku_item(PUZZLE, SOLUTION)
    assert task.score(item, SOLUTION) == 1.0
    assert task.score(item, "3142|2431|4213|1324") == 1.0
    assert task.score(item, " 3 1 4 2, 2 4 3 1, 4 2 1 3, 1 3 2 4 \n") == 1.0
    assert task.score(item, SOLUTION + "9999") == 1.0  # only the first 16 digits count
    assert task.score(item, SOLUTION[:15]) == 0.0  # truncated
    assert task.score(item, "") == 0.0
    # Swapping the first two rows gives a valid grid, but it contradicts the givens.
    assert is_valid_solution("0" * 16, "2431314242131324")
    assert task.score(item, "2431314242131324") == 0.0
    # Rows and boxes valid, columns not.
    assert is_valid_solution("0" * 16, "1234341212343412") is False
    # A digit repeated in a row (and its column and box).
    assert task.score(item, "3142243142131314") == 0.0
    # Rows and columns valid (a Latin square) but the 2x2 boxes are not.
    assert is_valid_solution("0" * 16, "1234234134124123") is False
    assert task.score(sudoku_item("0" * 16, "x"), "1234234134124123") == 0.0
    # A valid grid that changes a given cell (the puzzle's first cell 3 -> 1).
    other = next(g for g in ("".join(map(str, r)) for r in all_grids()) if g[0] != SOLUTION[0])
    assert is_valid_solution("0" * 16, other) and task.score(item, other) == 0.0
    assert task.score(item, SOLUTION.replace("4", "0", 1)) == 0.0  # a blank left in


def test_sudoku4_accepts_any_valid_solution():
    task = build("sudoku4")
    assert GRID_A != GRID_B and is_valid_solution("0" * 16, GRID_A) and is_valid_solution("0" * 16, GRID_B)
    puzzle = "".join(a if a == b else "0" for a, b in zip(GRID_A, GRID_B))
    item = sudoku_item(puzzle, GRID_A)
    assert task.score(item, GRID_A) == 1.0 and task.score(item, GRID_B) == 1.0


def test_sudoku4_grids_and_validation():
    grids = all_grids()
    assert grids.shape == (288, 16) and len({g.tobytes() for g in grids}) == 288
    with pytest.raises(HarnessError, match="n_blanks"):
        TASKS.build("sudoku4", {"n_blanks": 13})
    with pytest.raises(HarnessError, match="dataset"):
        TASKS.build("sudoku4", {"dataset": "d2"})


# -- countdown3 -------------------------------------------------------------------------------
def cd_item(numbers, target) -> Item:
    return Item(id="x", prompt="", reference="", meta={"numbers": list(numbers), "target": target})


@pytest.mark.parametrize("completion, expected", [
    ("(3+5)*2", 1), ("2*(5+3)", 1), (" (3 + 5) * 2 ", 1), ("(3+5)*2=", 1), ("(3+5)*2=16", 1),
    ("3+5*2", 0), ("(3+5)*2*1", 0), ("(3+3)*2", 0), ("16", 0), ("(3+5)*2=15", 0), ("", 0),
    ("import os", 0), ("__import__('os')", 0), ("(3+5)**2", 0), ("-(3+5)*2", 0), ("(3+5)*2.0", 0),
    ("(3+5)*(2", 0), ("(3+5)*2)", 0), ("3 5 2", 0), ("35*2", 0),
])
def test_countdown3_hand_made_answers(completion, expected):
    assert build("countdown3").score(cd_item((3, 5, 2), 16), completion) == expected


def test_countdown3_exact_fractions_and_division_by_zero():
    task = build("countdown3")
    # 10/4*6 = 15 only with exact arithmetic (integer division would give 12).
    assert task.score(cd_item((10, 4, 6), 15), "10/4*6") == 1.0
    assert task.score(cd_item((4, 6, 10), 15), "6/(4/10)") == 1.0
    assert task.score(cd_item((3, 3, 5), 5), "5/(3-3)") == 0.0  # division by zero
    assert task.score(cd_item((1, 2, 3), 1), "1/(2/3)") == 0.0  # 3/2, not 1
    with pytest.raises(ValueError):
        evaluate("5/(3-3)")
    assert evaluate("7-(2-1)") == (6, [7, 2, 1])


def test_countdown3_solver():
    for numbers, target in [((3, 5, 2), 16), ((10, 4, 6), 15), ((30, 100, 93), 23), ((7, 2, 1), 6)]:
        ref = solve(numbers, target)
        value, used = evaluate(ref)
        assert value == target and sorted(used) == sorted(numbers), ref
    assert solve((1, 1, 1), 100) == ""


# -- every task: determinism, split hygiene, references, vocabulary ---------------------------
GENERATED = [("addition", {}), ("sudoku4", {}), ("sudoku4", {"n_blanks": 1}),
             ("sudoku4", {"n_blanks": 12}), ("countdown3", {}), ("countdown3", {"max_number": 9})]


@pytest.mark.parametrize("name, params", GENERATED)
def test_generated_tasks(name, params):
    task = build(name, **params)
    test, train = task.items("test"), task.items("train")
    assert len(test) == SMALL["n_test"] and len(train) == SMALL["n_train"]
    assert [i.id for i in test[:2]] == ["test-0", "test-1"] and train[0].id == "train-0"
    # Deterministic from the seed; another seed gives other items.
    assert build(name, **params).items("test") == test
    assert build(name, **params, seed=1).items("test") != test
    # No prompt appears in both splits, and test prompts are distinct.
    assert not {i.prompt for i in test} & {i.prompt for i in train}
    assert len({i.prompt for i in test}) == len(test)
    tok = CharTokenizer()
    for item in test + train:
        assert task.score(item, item.reference) == 1.0, item
        tok.encode(item.prompt + item.reference)
        assert len(item.reference) + 1 <= task.gen_length, item


def test_countdown3_disjoint_up_to_number_order():
    task = build("countdown3", max_number=5, n_train=2000)
    key = lambda i: (tuple(sorted(i.meta["numbers"])), i.meta["target"])  # noqa: E731
    assert not {key(i) for i in task.items("test")} & {key(i) for i in task.items("train")}


def test_gen_length_rules():
    assert build("sudoku4").gen_length == 17
    assert build("countdown3", max_number=20).gen_length == 11  # "(20+19)*18" + EOS
    assert build("countdown3", max_number=9).gen_length == 8
    assert build("addition").gen_length == 5  # up to 4 sum digits + EOS
    assert build("addition", canvas=32).gen_length == 32  # the rest is EOS padding
    assert build("addition", canvas=32).items("test") == build("addition").items("test")  # same items
    with pytest.raises(HarnessError, match="canvas must be 0 or >= n_digits"):
        build("addition", canvas=4)


# -- d1 test sets -----------------------------------------------------------------------------
@pytest.mark.skipif(not have("sudoku/4x4_test.csv"), reason="offline data directory absent")
def test_sudoku4_d1():
    task = build("sudoku4", dataset="d1")
    test = task.items("test")
    assert len(test) == 500 and test[0].id == "d1-0" and test[0].prompt == PUZZLE + "="
    assert test[0].reference == SOLUTION
    assert all(task.score(i, i.reference) == 1.0 for i in test)
    train = task.items("train")
    assert not {i.prompt for i in test} & {i.prompt for i in train}
    tok = CharTokenizer()
    for item in test + train:
        tok.encode(item.prompt + item.reference)
    assert task.source().endswith("sha256:ef86c7c28ebef88484d85fda59b3909a7b621241aa1abf36343437dbc4a3ffb6")


@pytest.mark.skipif(not have("countdown/cd3_test.jsonl"), reason="offline data directory absent")
def test_countdown3_d1():
    task = build("countdown3", dataset="d1")
    test = task.items("test")
    assert len(test) == 256 and test[0].id == "d1-0" and test[0].prompt == "30,100,93:23="
    solvable = [i for i in test if i.meta["solvable"]]
    assert len(solvable) > 200  # d1's problems are meant to be solvable
    assert all(task.score(i, i.reference) == 1.0 for i in solvable)
    assert all(i.reference == "" for i in test if not i.meta["solvable"])
    assert task.gen_length == 14 and max(len(i.reference) for i in test) < task.gen_length
    key = lambda i: (tuple(sorted(i.meta["numbers"])), i.meta["target"])  # noqa: E731
    train = task.items("train")
    assert not {key(i) for i in test} & {key(i) for i in train}
    assert max(max(i.meta["numbers"]) for i in train) <= 100
    tok = CharTokenizer()
    for item in test + train:
        tok.encode(item.prompt + item.reference)
        assert len(item.reference) + 1 <= task.gen_length
    assert "sha256:9916f614621e26fb2b035ed4ea641e35e4fff0d533bb9b9c7bcaaa61017d88c6" in task.source()


# -- data paths -------------------------------------------------------------------------------
def test_data_dir_env_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DLM_HARNESS_DATA", str(tmp_path))
    assert data_mod.data_dir() == tmp_path
    with pytest.raises(HarnessError) as exc:
        data_mod.data_file("sudoku/4x4_test.csv", "the d1 Sudoku test set")
    msg = str(exc.value)
    assert str(tmp_path / "sudoku" / "4x4_test.csv") in msg and "DLM_HARNESS_DATA" in msg
    assert "d1 Sudoku" in msg
    with pytest.raises(HarnessError, match="DLM_HARNESS_DATA"):
        build("sudoku4", dataset="d1").items("test")
    (tmp_path / "f.txt").write_bytes(b"abc")
    assert data_mod.data_file("f.txt") == tmp_path / "f.txt"
    assert data_mod.sha256_file(tmp_path / "f.txt") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_data_dir_default_finds_shared(monkeypatch):
    monkeypatch.delenv("DLM_HARNESS_DATA", raising=False)
    found = data_mod.data_dir()
    assert found.parts[-2:] == ("shared", "data")
