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
