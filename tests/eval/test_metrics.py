import pytest
import sacrebleu

from codetune.eval.metrics import (
    codexglue_bleu,
    compute_bleu,
    edit_similarity,
    exact_match,
    levenshtein,
    sacre_bleu,
    sentence_bleu,
    syntax_validity,
    text_metrics,
)

HYP = ["def add ( a , b ) : return a + b", "the cat sat on the mat today"]
REF = ["def add ( x , y ) : return x + y", "the cat sat on the red mat today"]


def test_bleu_of_identical_strings_is_100() -> None:
    assert sacre_bleu(["return x + 1"], ["return x + 1"]) == pytest.approx(100.0)
    assert codexglue_bleu(["return x + 1"], ["return x + 1"]) == pytest.approx(100.0)
    assert sentence_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)


def test_bleu_matches_sacrebleu_on_a_known_pair() -> None:
    assert sacre_bleu(HYP, REF) == pytest.approx(36.30082994297367, abs=1e-9)
    # our independent n-gram BLEU agrees with sacrebleu when both tokenise on spaces and don't smooth
    reference = sacrebleu.corpus_bleu(HYP, [REF], tokenize="none", smooth_method="none").score
    assert 100 * compute_bleu([r.split() for r in REF], [h.split() for h in HYP]) == pytest.approx(
        reference, abs=1e-9
    )


def test_codexglue_smoothing_by_hand() -> None:
    # precisions with +1 smoothing: 4/5, 3/4, 2/3, 1/2 -> geometric mean 0.2 ** 0.25; no brevity penalty
    assert codexglue_bleu(["a b c d"], ["a b c e"]) == pytest.approx(100 * 0.2**0.25, abs=1e-9)
    # brevity penalty: hypothesis 2 tokens vs reference 4
    assert codexglue_bleu(["a b"], ["a b c d"]) == pytest.approx(
        100 * ((3 / 3) * (2 / 2) * (1 / 1) * (1 / 1)) ** 0.25 * 2.718281828459045 ** (1 - 4 / 2), abs=1e-9
    )


def test_exact_match_edit_similarity_and_syntax() -> None:
    assert exact_match(["x = 1", "y  =  2"], ["x = 1", "y = 2\n"]) == 100.0
    assert exact_match(["x = 1"], ["x = 2"]) == 0.0
    assert levenshtein("kitten", "sitting") == 3
    assert edit_similarity(["kitten"], ["sitting"]) == pytest.approx(100 * (1 - 3 / 7))
    assert edit_similarity([""], [""]) == 100.0
    assert syntax_validity(["def f():\n    return 1", "def f(:"]) == 50.0


def test_text_metrics_has_every_metric() -> None:
    m = text_metrics(HYP, REF)
    assert set(m) == {
        "bleu",
        "codexglue_bleu",
        "sentence_bleu",
        "exact_match",
        "edit_similarity",
        "syntax_validity",
    }
    assert "syntax_validity" not in text_metrics(HYP, REF, language="java")
