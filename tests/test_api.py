"""The Python API as docs/api.md shows it: every python block of that page runs, in order, and
does what the page says (a network of one's own, registered or not; a registered regularizer
that the audit checks and a resumed run restores)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import reglab
from reglab.models import MODELS
from reglab.regularization import REGULARIZERS

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.slow
def test_docs_api_examples_run(real_data_dir, monkeypatch, capsys):
    monkeypatch.setenv("REGLAB_DATA", str(real_data_dir))
    monkeypatch.setitem(MODELS, "__sentinel__", None)  # the registries are restored afterwards
    monkeypatch.setitem(REGULARIZERS, "__sentinel__", None)
    namespace: dict = {}
    for code in blocks():
        exec(compile(code, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "holdout accuracy" in out
    assert "small-cnn" in MODELS and MODELS["small-cnn"].min_image_size == 8
    assert "group-lasso" in REGULARIZERS
    assert re.search(r"group-lasso=1e-3 +gradient +7 tensors +max rel. error \S+ +outside scope "
                     r"unchanged: yes +ok\n", out), out  # checked, not "not checked"
    result = namespace["result"]
    assert result.regularization == ["group-lasso=1e-3"] and 0.1 < result.final_val_acc <= 1
    assert reglab.train is namespace["reglab"].train
