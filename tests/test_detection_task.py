"""The detection task end to end at det-smoke scale: the one training loop trains a detection teacher
and students, evaluates them with COCO mAP, and writes records the leaderboard ranks by mAP."""

import json

import pytest

from kdbench.cli import main
from kdbench.results import read_record


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_det_smoke_grid_records_map(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--preset", "det-smoke", "--distiller", "kd,fitnet,ofa,pat", "--pairs", "det",
                 "--out", str(out)]) == 0
    recs = {(d.parts[-3], d.parts[-2]): read_record(d) for d in (out / "det-smoke").glob("*__*/*/seed0")}
    assert len(recs) == 8 and all(r.status == "done" for r in recs.values())
    for (pair, method), r in recs.items():
        assert r.task == "detection" and r.metric == "map" and r.top1 is None
        assert 0.0 <= r.headline <= 100.0 and {"map50", "map75", "best_map"} <= set(r.metrics)
        assert r.config["task"] == "detection" and r.config["detector"]["fpn_channels"] == 32
        assert (r.extra_params > 0) == (method != "kd")     # the others train modules beside the detector
    manifest = json.loads(next((out / "teachers" / "det-smoke").glob("*/manifest.json")).read_text())
    assert manifest["metric"] == "map"
    capsys.readouterr()
    assert main(["leaderboard", "--out", str(out), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"].startswith("map") and len(doc["cells"]) == 8
    assert main(["leaderboard", "--out", str(out)]) == 0
    md = capsys.readouterr().out
    assert "teacher mAP" in md and "mAP (%) at the final epoch" in md


def test_a_method_without_detection_is_a_usage_error(tmp_path, capsys):
    assert main(["run", "--preset", "det-smoke", "--distiller", "kd+ls", "--pairs", "det",
                 "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "does not support the detection task" in err and "classification" in err
    assert not (tmp_path / "runs").exists()
