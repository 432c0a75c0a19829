"""The run-record contract (DESIGN.md §7): one owner of result.json, metrics.jsonl and manifest.json,
today's key order kept, the schema checked on read."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from distillers.base import TaskConfig
from kdbench.config import RunConfig, TeacherConfig, load_preset
from kdbench.errors import UsageError
from kdbench.results import (MANIFEST_FILE, RESULT_FILE, SCHEMA, RecordError, RunRecord, TeacherManifest,
                             iter_records, read_manifest, read_metrics, read_record, write_manifest, write_metrics,
                             write_record)

ROOT = Path(__file__).resolve().parent.parent
# Key order of the records kdbench wrote before RunRecord existed (engine.Trainer.record, cli._failed_record).
DONE_KEYS = ["schema", "status", "error", "distiller", "teacher", "student", "preset", "dataset", "seed", "top1",
             "top5", "best_top1", "best_epoch", "ema_top1", "teacher_top1", "epochs", "wall_s", "train_img_per_s",
             "peak_mem_mb", "student_params", "extra_params", "global_batch_size", "world_size",
             "per_rank_batch_size", "lr", "num_train", "num_test", "protocol", "config", "config_hash", "versions"]
FAILED_KEYS = ["schema", "status", "error", "traceback", "distiller", "teacher", "student", "preset", "dataset",
               "seed", "config", "config_hash"]
# A done record as `kdbench run --preset smoke` wrote it (the config shortened; it is an opaque object).
DONE = {"schema": 1, "status": "done", "error": None, "distiller": "kd", "teacher": "kdbench_convnext_t_xs",
        "student": "kdbench_deit_t_xs", "preset": "smoke", "dataset": "synthetic", "seed": 0, "top1": 21.09375,
        "top5": 67.578125, "best_top1": 21.09375, "best_epoch": 3, "ema_top1": None, "teacher_top1": 37.890625,
        "epochs": 3, "wall_s": 1.03, "train_img_per_s": 3214.7, "peak_mem_mb": 966.7, "student_params": 31138,
        "extra_params": 0, "global_batch_size": 64, "world_size": 1, "per_rank_batch_size": 64, "lr": 0.002,
        "num_train": 1024, "num_test": 256,
        "protocol": "top1/top5: final-epoch test accuracy of the raw student (headline); best_top1: best epoch on "
                    "the test set, as the papers report (optimistic, flagged); ema_top1: final EMA student",
        "config": {"preset": "smoke", "seed": 0, "distiller": {"name": "kd", "temperature": 1.0},
                   "recipe": {"epochs": 3, "lr": 0.002}, "models": {"teacher": "_convnext[...]"}},
        "config_hash": "3f0c1d2e4b5a6978",
        "versions": {"kdbench": "0.1.0", "source": "4987fde40171", "torch": "2.14.1+cu130", "timm": "1.0.31",
                     "python": "3.11.7", "device": "cpu: cpu", "world_size": 1}}


def as_written(obj) -> str:
    return json.dumps(obj, indent=2) + "\n"


def smoke_run(seed=0) -> RunConfig:
    preset = load_preset("smoke")
    return RunConfig(preset="smoke", teacher="kdbench_resnet18_xs", student="kdbench_resnet18_xs", seed=seed,
                     distiller="vanilla", distiller_config=TaskConfig(), recipe=preset.cnn, data=preset.data,
                     teacher_config=TeacherConfig())


def test_only_results_py_names_the_record_files():
    """Every other module of the repository (the package, the distillers, the benchmarks' scripts and
    the studies; the tests aside, which write records in the official format on purpose) reads and
    writes records through kdbench.results."""
    offenders = [f"{p.relative_to(ROOT)}: {name}"
                 for folder in ("kdbench", "distillers", "benchmarks", "studies")
                 for p in sorted((ROOT / folder).rglob("*.py"))
                 if p != ROOT / "kdbench" / "results.py"
                 for name in ("result.json", "manifest.json", "metrics.jsonl") if name in p.read_text()]
    assert not offenders, "record files named outside kdbench/results.py:\n" + "\n".join(offenders)


def test_done_record_round_trip_keeps_todays_bytes(tmp_path):
    assert list(DONE) == DONE_KEYS
    (tmp_path / RESULT_FILE).write_text(as_written(DONE))
    rec = read_record(tmp_path)
    assert rec.top1 == 21.09375 and rec.ema_top1 is None and rec.versions["world_size"] == 1
    assert rec.dir == tmp_path and "dir" not in rec.to_dict()          # a reader artefact, never written
    write_record(tmp_path / "again", rec)
    assert (tmp_path / "again" / RESULT_FILE).read_text() == as_written(DONE)


def test_done_record_built_by_the_engine_has_todays_keys():
    run = smoke_run()
    history = [{"epoch": 1, "top1": 30.0, "top5": 80.0}, {"epoch": 2, "top1": 40.0, "top5": 90.0},
               {"epoch": 3, "top1": 35.0, "top5": 91.0}]
    rec = RunRecord.done(run, history, dataset="synthetic", num_train=1024, num_test=256, teacher_top1=50.0,
                         wall_s=1.234, img_per_s=999.94, peak_mem_mb=12.34, student_params=10, extra_params=2,
                         world_size=2, device=torch.device("cpu"))
    d = rec.to_dict()
    assert list(d) == DONE_KEYS
    assert (d["top1"], d["top5"], d["best_top1"], d["best_epoch"]) == (35.0, 91.0, 40.0, 2)
    assert (d["wall_s"], d["train_img_per_s"], d["peak_mem_mb"]) == (1.23, 999.9, 12.3)
    assert d["per_rank_batch_size"] == run.recipe.batch_size // 2 and d["config_hash"] == run.hash()
    assert set(d["versions"]) == {"kdbench", "source", "torch", "timm", "python", "device", "world_size", "malloc"}


def test_failed_record_has_todays_keys_and_the_traceback(tmp_path):
    run = smoke_run(seed=3)
    try:
        raise RuntimeError("non-finite loss at step 3")
    except RuntimeError as exc:
        rec = RunRecord.failed(run, exc)
    d = rec.to_dict()
    assert list(d) == FAILED_KEYS
    assert d["error"] == "RuntimeError: non-finite loss at step 3" and d["dataset"] == run.data.dataset
    assert d["traceback"].startswith("Traceback") and "test_failed_record_has" in d["traceback"]
    write_record(tmp_path, rec)
    text = (tmp_path / RESULT_FILE).read_text()
    assert text == as_written(d)
    write_record(tmp_path / "again", read_record(tmp_path))
    assert (tmp_path / "again" / RESULT_FILE).read_text() == text


def test_absent_or_half_written_record_is_none(tmp_path):
    assert read_record(tmp_path) is None
    (tmp_path / RESULT_FILE).write_text(as_written(DONE)[:200])            # a crash mid-write
    assert read_record(tmp_path) is None


@pytest.mark.parametrize("content, found", [
    ({**DONE, "schema": 0}, "found schema 0"),
    ({**DONE, "schema": 2}, "found schema 2"),
    ({k: v for k, v in DONE.items() if k != "schema"}, "found no schema"),
    ([DONE], "found a JSON list"),
    ({"schema": 1, "top1": 50.0}, "found no status"),
    ({**DONE, "status": "running"}, "found status 'running'"),
    ({**DONE, "top1": "fifty"}, "found top1 'fifty'"),
])
def test_old_or_foreign_record_is_one_clear_line(tmp_path, content, found):
    (tmp_path / RESULT_FILE).write_text(json.dumps(content))
    with pytest.raises(RecordError) as info:
        read_record(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, UsageError) and "\n" not in message
    assert message.startswith(f"{tmp_path / RESULT_FILE} is not a kdbench run record of schema {SCHEMA} ")
    assert found in message


def test_iter_records_sets_dir(tmp_path):
    for seed in (1, 0):
        write_record(tmp_path / "smoke" / "t__s" / "kd" / f"seed{seed}", RunRecord(**{
            k: v for k, v in {**DONE, "seed": seed}.items()}))
    (tmp_path / "smoke" / "t__s" / "kd" / "seed2").mkdir()                 # unfinished: no record
    recs = list(iter_records(tmp_path))
    assert [r.seed for r in recs] == [0, 1] and recs[0].dir == tmp_path / "smoke" / "t__s" / "kd" / "seed0"


def test_metrics_lines(tmp_path):
    rows = [{"epoch": 1, "loss": {"ce": 2.3}, "top1": 10.0}, {"epoch": 2, "loss": {"ce": 1.9}, "top1": 20.0}]
    write_metrics(tmp_path, rows)
    assert read_metrics(tmp_path) == rows and read_metrics(tmp_path / "none") == []


def trained_manifest():
    run = smoke_run()
    record = RunRecord(**{**DONE, "teacher": run.teacher, "student": run.teacher})
    return TeacherManifest.trained(run, record, num_classes=10, file="model.pt", sha256="ab" * 32)


def released_manifest():
    run = dataclasses.replace(smoke_run(), teacher_config=dataclasses.replace(TeacherConfig(), source="checkpoint"))
    return TeacherManifest.released(run, dataset="cifar100", num_classes=100, top1=77.5, top5=93.0,
                                    file="/zoo/resnet18_cifar100.pth", sha256="cd" * 32, weights="state_dict_ema",
                                    published_top1=77.8, published_src="V", published_gap=-0.3, warning=None)


@pytest.mark.parametrize("make", [trained_manifest, released_manifest])
def test_manifest_round_trip(tmp_path, make):
    m = make()
    write_manifest(tmp_path, m)
    text = (tmp_path / MANIFEST_FILE).read_text()
    data = json.loads(text)
    assert list(data) == [f.name for f in dataclasses.fields(TeacherManifest)       # one key set (a field written
                          if f.name != "note" and f.metadata.get("written") != "if-set"]   # only if set is not)
    assert data["schema"] == SCHEMA and read_manifest(tmp_path) == m
    write_manifest(tmp_path / "again", read_manifest(tmp_path))
    assert (tmp_path / "again" / MANIFEST_FILE).read_text() == text


def test_manifest_kinds():
    t, r = trained_manifest(), released_manifest()
    assert (t.source, t.top1, t.epochs, t.params, t.weights, t.recipe["distiller"]["name"]) == \
        ("train", 21.09375, 3, 31138, None, "vanilla")
    assert (r.source, r.top1, r.weights, r.published_gap, r.epochs, r.recipe) == \
        ("checkpoint", 77.5, "state_dict_ema", -0.3, None, None)


def test_manifest_readers_absent_partial_legacy_foreign(tmp_path):
    assert read_manifest(tmp_path) is None
    write_manifest(tmp_path, trained_manifest())
    full = (tmp_path / MANIFEST_FILE).read_text()
    (tmp_path / MANIFEST_FILE).write_text(full[:100])                       # half-written: not cached
    assert read_manifest(tmp_path) is None
    # Written before manifests had a schema: the same keys less `schema` and `source`.
    legacy = {k: v for k, v in json.loads(full).items() if v is not None and k not in ("schema", "source")}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(legacy))
    assert read_manifest(tmp_path) == trained_manifest()
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**legacy, "weights": "state_dict"}))
    assert read_manifest(tmp_path).source == "checkpoint"
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({**json.loads(full), "schema": 2}))
    with pytest.raises(RecordError, match=r"manifest.json is not a kdbench teacher manifest of schema 1 \(found "
                                          r"schema 2\)"):
        read_manifest(tmp_path)
