"""The documentation builds with warnings as errors (the gallery rendered, not run)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("numpydoc")
pytest.importorskip("sphinx_gallery")
pytest.importorskip("myst_parser")

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_with_warnings_as_errors(tmp_path):
    # A copy, so the build's generated pages stay out of the checkout.
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("_build"))
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "docs", "html"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pages = {p.name for p in (tmp_path / "html" / "api").glob("*.html")}
    assert "sktransfer.FineTunedClassifier.html" in pages
    assert (tmp_path / "html" / "user_guide.html").exists()
    assert (tmp_path / "html" / "auto_examples" / "index.html").exists()
