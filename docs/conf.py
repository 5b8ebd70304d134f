"""Sphinx configuration: numpydoc API pages, the Markdown user guide, the gallery.

Build with warnings as errors: ``python -m sphinx -W -b html docs docs/_build/html``.
``SKTRANSFER_GALLERY=run`` executes the gallery's examples (minutes each on
two CPU cores); by default they are rendered without running, and say so.
"""

import os

# sphinx-gallery looks up each name an example imports; HalvingGridSearchCV
# exists only once enabled (scikit-learn's own conf.py does the same).
from sklearn.experimental import enable_halving_search_cv  # noqa: F401

import sktransfer

project = "sktransfer"
author = "sktransfer developers"
release = version = sktransfer.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]
autosummary_generate = True
templates_path = ["_templates"]
numpydoc_show_class_members = False
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]
intersphinx_mapping = {}

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_" if os.environ.get("SKTRANSFER_GALLERY") == "run" else r"^$",
    "download_all_examples": False,
    "abort_on_example_error": True,
}

html_theme = "alabaster"
