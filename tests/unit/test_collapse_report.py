"""Collapsed classifiers are named by `genodl status` and `genodl report`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from genodl_core.results.collapse import (collapse_warning, collapsed_in_records,
                                          collapsed_in_table)


def test_warning_names_the_collapsed_trials_and_their_class():
    assert collapse_warning({}) is None
    line = collapse_warning({"a1": 1, "b2": None})
    assert line.startswith("warning: 2 trial(s) predict a single class")
    assert "a1 (class 1)" in line and "b2 (class ?)" in line
    many = collapse_warning({f"t{i}": 0 for i in range(7)})
    assert many.endswith(", ...") and "t5" not in many


def test_collapsed_trials_are_read_from_records_and_from_the_gathered_table(tmp_path):
    for tid, extra in (("ok", {"collapsed": False}), ("flat", {"collapsed": True,
                                                                "collapsed_class": 0})):
        (tmp_path / tid).mkdir()
        (tmp_path / tid / "result.json").write_text(json.dumps({"extra": extra}))
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "result.json").write_text("{not json")
    assert collapsed_in_records(sorted(tmp_path.iterdir())) == {"flat": 0}

    table = pd.DataFrame({"extra.collapsed": [False, True, None],
                          "extra.collapsed_class": [np.nan, 1.0, np.nan]},
                         index=pd.Index(["a", "b", "c"], name="trial_id"))
    assert collapsed_in_table(table) == {"b": 1}
    assert collapsed_in_table(table.drop(columns="extra.collapsed")) == {}
