"""The README's demo runs end to end (in its quick form) and writes what it says."""

import joblib
import pandas as pd

from sktransfer import demo


def test_demo_quick_writes_table_plot_and_a_model_that_reloads(tmp_path, capsys):
    demo.main(["--quick", "--output-dir", str(tmp_path), "--n-jobs", "1"])
    out = capsys.readouterr().out
    assert "same probabilities: True" in out
    results = pd.read_csv(tmp_path / "results.csv", index_col=0)
    assert list(results.index) == [3, 5]
    assert results[["fine-tuned", "frozen + logreg", "scratch"]].gt(0.2).all().all()
    assert (tmp_path / "accuracy_vs_examples.png").stat().st_size > 10_000
    model = joblib.load(tmp_path / "finetuned_digits.joblib")
    (_, _), (X, y) = demo.load_tasks()
    assert model.score(X, y) > 0.5
