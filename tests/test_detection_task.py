"""The detection task end to end at det-smoke scale (WIP, issue 17): the one training loop trains a
detection teacher and students, evaluates them with COCO mAP, and writes records the leaderboard reads."""

import json

import pytest

from kdbench.cli import main
from kdbench.registry import DISTILLERS
from kdbench.results import read_record


def test_detection_distillers_declare_their_task():
    assert {"vanilla", "kd"} <= set(DISTILLERS.names("detection"))
    assert DISTILLERS.get("kd", "detection") is not DISTILLERS.get("kd")
    with pytest.raises(Exception, match="supports: classification"):
        DISTILLERS.get("dkd", "detection")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_det_smoke_grid_records_map(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--preset", "det-smoke", "--distiller", "vanilla,kd", "--pairs", "det",
                 "--out", str(out)]) == 0
    recs = [read_record(d) for d in (out / "det-smoke").glob("*__*/*/seed0")]
    assert len(recs) == 4 and all(r.status == "done" for r in recs)
    for r in recs:
        assert r.task == "detection" and r.metric == "map" and r.top1 is None
        assert 0.0 <= r.headline <= 100.0 and {"map50", "map75"} <= set(r.metrics)
    manifest = json.loads(next((out / "teachers" / "det-smoke").glob("*/manifest.json")).read_text())
    assert manifest["metric"] == "map"
    capsys.readouterr()                       # the grid's own output
    assert main(["leaderboard", "--out", str(out), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["cells"]) == 4
