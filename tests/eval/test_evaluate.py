import json
from pathlib import Path

from codetune.config import Config
from codetune.eval.evaluate import evaluate
from codetune.manifest import read_jsonl


def test_evaluate_scores_base_and_final(trained_run: Config) -> None:
    report = evaluate(trained_run)
    assert set(report.metrics) == {"base", "final"}
    out = Path(trained_run.eval.output_dir)
    test_rows = read_jsonl(Path(trained_run.data.output_dir) / "test.jsonl")
    for label in ("base", "final"):
        preds = read_jsonl(out / label / "predictions.jsonl")
        assert [p["id"] for p in preds] == [r["id"] for r in test_rows]
        assert set(preds[0]) >= {"id", "prompt", "reference", "prediction"}
        metrics = json.loads((out / label / "metrics.json").read_text())
        for key in ("bleu", "codexglue_bleu", "exact_match", "edit_similarity", "syntax_validity"):
            assert 0.0 <= metrics[key] <= 100.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["sha256"] and manifest["decoding"]["temperature"] == 0.0
    assert "transformers" in manifest["versions"]
    # a trained model beats its random initialisation on this easy data
    assert report.metrics["final"]["edit_similarity"] > report.metrics["base"]["edit_similarity"]
    # answers cut at max_new_tokens are counted per model, and the paired difference is in summary.json
    summary = json.loads((out / "summary.json").read_text())
    for label in ("base", "final"):
        preds = read_jsonl(out / label / "predictions.jsonl")
        cut = sum(p["finish_reason"] == "length" for p in preds)
        assert summary["metrics"][label]["truncated"] == report.metrics[label]["truncated"] == cut
    paired = summary["paired"]["final"]
    assert paired["baseline"] == "base" and paired["examples"] == len(test_rows)
    gain = report.metrics["final"]["edit_similarity"] - report.metrics["base"]["edit_similarity"]
    assert abs(paired["edit_similarity"]["delta"] - gain) < 1e-3  # the mean of the per-example differences
    assert (
        paired["edit_similarity"]["lo"]
        <= paired["edit_similarity"]["delta"]
        <= paired["edit_similarity"]["hi"]
    )
    html = (out / "report.html").read_text()
    n = len(test_rows)
    assert f"{n} examples" in html and "Largest drops: final vs base" in html
    assert f"final − base, paired over {n} examples" in html and "cut at max_new_tokens" in html
    assert 'alt="loss vs step"' in html  # the curves of the run the final model was trained in


def test_the_results_table_never_cuts_a_figure_to_fit_the_terminal() -> None:
    import io

    from rich.console import Console

    from codetune.eval.evaluate import Report, _print_table

    metrics = {
        "bleu": 6.4516,
        "codexglue_bleu": 1.0801,
        "edit_similarity": 23.8632,
        "syntax_validity": 100.0,
        "examples": 16,
        "seconds": 278.24,
    }
    labels = ["base", "final", "tuned-lr2e-4-step32", "tuned-lr2e-4-step64"]
    report = Report(Path("runs/x/eval"), {label: dict(metrics) for label in labels})
    for width in (80, 50, 20):  # a log file or pipe is 80 columns to rich; 20 fits no model at all
        out = io.StringIO()
        _print_table(Console(file=out, width=width), report)
        text = out.getvalue()
        assert "…" not in text
        for figure in ("6.45", "1.08", "23.86", "100.00", "16", "278.24", *labels, *metrics):
            assert f" {figure} " in text, (width, figure)
        if width >= 50:  # wide enough for the metric column and one model: every line fits
            assert max(map(len, text.splitlines())) <= width


def test_a_report_that_cannot_be_made_is_said_and_the_evaluation_still_returns(
    trained_run: Config, tmp_path: Path
) -> None:
    import dataclasses
    import io

    from rich.console import Console

    out = tmp_path / "eval"
    stale = out / "older-run"  # from another split: shares no example id with this one
    stale.mkdir(parents=True)
    (stale / "predictions.jsonl").write_text(
        json.dumps({"id": "not-in-this-split", "prediction": "x", "reference": "y"}) + "\n"
    )
    cfg = dataclasses.replace(
        trained_run, eval=dataclasses.replace(trained_run.eval, output_dir=str(out), max_examples=2)
    )
    said = io.StringIO()
    report = evaluate(cfg, Console(file=said, width=200))
    assert set(report.metrics) == {"base", "final"} and (out / "final" / "metrics.json").is_file()
    assert not (out / "report.html").exists()
    assert "report.html not written" in said.getvalue() and "share no example id" in said.getvalue()
