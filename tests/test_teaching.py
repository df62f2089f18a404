import pytest

from forgetting_sam.teaching import check, claim


def test_claim_prints_the_verdict_and_returns_it(capsys):
    assert claim("two is more than one", 2 > 1) is True
    assert claim("one is more than two", 1 > 2) is False
    out = capsys.readouterr().out.splitlines()
    assert out == ["CLAIM HOLDS: two is more than one", "CLAIM DOES NOT HOLD: one is more than two"]


def test_claim_needs_a_sentence():
    with pytest.raises(ValueError, match="sentence"):
        claim("", True)


def test_check_raises_on_a_wrong_answer(capsys):
    check("right", True)
    assert capsys.readouterr().out == "PASSED: right\n"
    with pytest.raises(AssertionError, match="NOT YET: wrong .hint: try again"):
        check("wrong", False, hint="try again")
