"""Tests of the `kdbench` command line (DESIGN.md §6): usage errors, `list`, `python -m kdbench`."""

import json
import subprocess
import sys

import pytest

import kdbench
from kdbench.cli import main

# algorithms.md §4.1: the 12 CIFAR-100 pairs in paper order (teacher, student, set).
CIFAR_PAIRS = [
    ("swin_tiny_patch4_window7_224", "resnet18", "cnn-students"),
    ("vit_small_patch16_224", "resnet18", "cnn-students"),
    ("mixer_b16_224", "resnet18", "cnn-students"),
    ("swin_tiny_patch4_window7_224", "mobilenetv2_100", "cnn-students"),
    ("vit_small_patch16_224", "mobilenetv2_100", "cnn-students"),
    ("mixer_b16_224", "mobilenetv2_100", "cnn-students"),
    ("convnext_tiny", "deit_tiny_patch16_224", "vit-mlp-students"),
    ("mixer_b16_224", "deit_tiny_patch16_224", "vit-mlp-students"),
    ("convnext_tiny", "swin_pico_patch4_window7_224", "vit-mlp-students"),
    ("mixer_b16_224", "swin_pico_patch4_window7_224", "vit-mlp-students"),
    ("convnext_tiny", "resmlp_12_224", "vit-mlp-students"),
    ("swin_tiny_patch4_window7_224", "resmlp_12_224", "vit-mlp-students"),
]
# algorithms.md §4.2: the 15 ImageNet pairs.
IMAGENET_PAIRS = {
    (t, s) for s, ts in (("resnet18", ("deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "mixer_b16_224")),
                         ("mobilenetv2_100", ("deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
                                              "mixer_b16_224")),
                         ("deit_tiny_patch16_224", ("resnet50", "convnext_tiny", "mixer_b16_224")),
                         ("swin_nano_patch4_window7_224", ("resnet50", "convnext_tiny", "mixer_b16_224")),
                         ("resmlp_12_224", ("resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224")))
    for t in ts
}


# ----------------------------------------------------------------------------- usage errors

def _run_args(tmp_path, *extra, distiller="kd", preset="smoke"):
    return ["run", "--distiller", distiller, "--preset", preset, "--out", str(tmp_path / "out"), *extra]


BAD_RUNS = [
    # id, argv after the common part (or a full argv builder), strings the message must contain
    ("unknown-distiller", dict(distiller="kdd"), [], ["'kdd'", "'kd'", "vanilla"]),
    ("unknown-distiller-in-list", dict(distiller="kd,nope"), [], ["'nope'", "kd", "vanilla"]),
    ("unknown-pair-set", {}, ["--pairs", "cnn-studnts"], ["'cnn-studnts'", "cnn-students", "vit-mlp-students",
                                                          "T:S"]),
    ("unknown-model", {}, ["--pairs", "kdbench_swin_t_xs:resnet99"], ["'resnet99'", "resnet18",
                                                                        "kdbench_resnet18_xs"]),
    ("unknown-preset", dict(preset="tinyy"), [], ["'tinyy'", "tiny", "smoke"]),
    ("unknown-dataset", {}, ["--set", "data.dataset=mnist"], ["'mnist'", "fashion-mnist", "synthetic",
                                                               "cifar100"]),
    ("malformed-set", {}, ["--set", "recipe.epochs"], ["recipe.epochs", "key=value"]),
    ("unknown-set-section", {}, ["--set", "recpe.epochs=3"], ["'recpe'", "recipe", "distiller"]),
    ("unknown-set-field", {}, ["--set", "recipe.epoch=3"], ["'epoch'", "epochs"]),
    ("bad-set-type", {}, ["--set", "recipe.epochs=abc"], ["'abc'", "recipe.epochs"]),
    ("bad-epochs", {}, ["--set", "recipe.epochs=-1"], ["-1", "recipe.epochs", ">= 1"]),
    ("bad-temperature", {}, ["--set", "distiller.temperature=0"], ["temperature"]),
    ("bad-compile", {}, ["--set", "compile=maybe"], ["compile", "true, false or auto"]),
    ("seeds-zero", {}, ["--seeds", "0"], ["--seeds", "'0'"]),
    ("seeds-negative", {}, ["--seeds", "0,-1"], ["--seeds", ">= 0"]),
    ("device-tpu", {}, ["--device", "tpu"], ["'tpu'", "cpu", "cuda", "auto"]),
]


@pytest.mark.parametrize("kw,extra,needles", [pytest.param(*row[1:], id=row[0]) for row in BAD_RUNS])
def test_run_usage_errors(tmp_path, capsys, kw, extra, needles):
    _assert_usage_error(tmp_path, capsys, _run_args(tmp_path, *extra, **kw), needles)


def _assert_usage_error(tmp_path, capsys, argv, needles):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("kdbench: error: ")
    assert "Traceback" not in captured.err and captured.out == ""
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), f"files written: {list(out.rglob('*'))}"
    return lines[0]


def test_run_empty_data_root_tiny(tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    msg = _assert_usage_error(tmp_path, capsys, _run_args(tmp_path, "--data-root", str(root), preset="tiny"),
                              ["fashion-mnist", str(root)])
    assert "--data-root" in msg


def test_run_empty_data_root_fashion_on_smoke(tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    _assert_usage_error(tmp_path, capsys,
                        _run_args(tmp_path, "--set", "data.dataset=fashion-mnist", "--data-root", str(root)),
                        ["fashion-mnist", str(root)])


def test_teach_usage_error(tmp_path, capsys):
    _assert_usage_error(tmp_path, capsys, ["teach", "--preset", "smoke", "--out", str(tmp_path / "out"),
                                           "--pairs", "nope"], ["'nope'", "all"])


@pytest.mark.parametrize("argv,needles", [
    (["run", "--preset", "smoke"], ["--distiller"]),            # required option missing
    (["list", "teachers"], ["'teachers'", "distillers", "pairs"]),
    (["frobnicate"], ["'frobnicate'", "run", "list"]),
    (["run", "--distiller", "kd", "--bogus"], ["--bogus"]),
], ids=["missing-distiller", "bad-list-what", "bad-command", "unknown-option"])
def test_argparse_errors_are_one_line(tmp_path, capsys, argv, needles):
    _assert_usage_error(tmp_path, capsys, argv, needles)


def test_list_unknown_preset(capsys):
    assert main(["list", "pairs", "--preset", "tinyy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdbench: error: ") and "'tiny'" in err


# ----------------------------------------------------------------------------- list

@pytest.mark.parametrize("what", ["distillers", "pairs", "presets", "models"])
def test_list_json(capsys, what):
    assert main(["list", what, "--preset", "smoke", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)


@pytest.mark.parametrize("what", ["distillers", "pairs", "presets", "models"])
def test_list_text(capsys, what):
    assert main(["list", what, "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and not out.lstrip().startswith("[")


def test_list_distillers_and_presets(capsys):
    assert main(["list", "distillers", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert {"kd", "vanilla"} <= set(names) and names == sorted(names)
    assert main(["list", "presets", "--json"]) == 0
    presets = {r["name"]: r["description"] for r in json.loads(capsys.readouterr().out)}
    assert {"smoke", "tiny"} <= set(presets) and all(presets.values())


def test_list_pairs_tiny(capsys):
    assert main(["list", "pairs", "--preset", "tiny", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all({"teacher", "student", "set"} <= set(r) for r in rows)
    cifar = [r for r in rows if r["set"] in ("cnn-students", "vit-mlp-students")]
    imagenet = [r for r in rows if r["set"].startswith("imagenet")]
    assert len(cifar) == 12 and len(imagenet) == 15 and len(rows) == 27
    assert rows[:12] == cifar, "the `all` pairs come first"
    assert [(r["paper_teacher"], r["paper_student"], r["set"]) for r in cifar] == CIFAR_PAIRS
    assert (cifar[0]["teacher"], cifar[0]["student"]) == ("kdbench_swin_t_s", "kdbench_resnet18_s")
    assert {(r["paper_teacher"], r["paper_student"]) for r in imagenet} == IMAGENET_PAIRS
    assert all(r["teacher"].startswith("kdbench_") and r["teacher"].endswith("_s") for r in rows)
    assert all(r["student"].startswith("kdbench_") and r["student"].endswith("_s") for r in rows)


def test_list_pairs_default_preset_is_tiny(capsys):
    assert main(["list", "pairs", "--json"]) == 0
    default = capsys.readouterr().out
    assert main(["list", "pairs", "--preset", "tiny", "--json"]) == 0
    assert capsys.readouterr().out == default


def test_list_models_smoke(capsys):
    assert main(["list", "models", "--preset", "smoke", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r["paper_model"] for r in rows}
    assert by_name["kdbench_resnet18_xs"] == "resnet18"
    assert by_name["kdbench_swin_p_xs"] == "swin_pico_patch4_window7_224"
    assert "kdbench_resnet18_s" in by_name and by_name["kdbench_resnet18_s"] is None
    assert len(by_name) == len(rows)


# ----------------------------------------------------------------------------- python -m kdbench

def test_python_m_version():
    proc = subprocess.run([sys.executable, "-m", "kdbench", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"kdbench {kdbench.__version__}"


def test_user_preset_files(tmp_path, capsys):
    from importlib import resources
    good = tmp_path / "mine.yaml"
    text = resources.files("benchmarks").joinpath("presets", "smoke.yaml").read_text()
    good.write_text(text.replace("name: smoke", "name: mine"))
    assert main(["list", "pairs", "--preset", str(good), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["set"] in ("cnn-students", "vit-mlp-students") for r in rows) == 12
    truncated = tmp_path / "truncated.yaml"
    truncated.write_text(text[: text.index("models:") + 40] + "\n  broken: [1, 2\n")
    missing = tmp_path / "missing.yaml"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(text.replace("seeds: 1", "seeds: many"))
    for path, needles in ((truncated, ["not valid YAML", str(truncated)]),
                          (missing, ["cannot read preset file", str(missing), "smoke", "tiny"]),
                          (wrong, ["'many'", "seeds"])):
        _assert_usage_error(tmp_path, capsys, _run_args(tmp_path, preset=str(path)), needles)


@pytest.mark.parametrize("extra,message", [
    (["--set", "data.train_limit=-5"], "bad value -5 for data.train_limit: must be >= 0"),
    (["--set", "data.img_size=0"], "bad value 0 for data.img_size: must be an integer >= 1"),
    (["--set", "data.dataset=mnist"], "unknown dataset 'mnist' (did you mean"),
    (["--seeds", "0,0"], "seed 0 is listed twice"),
    (["--distiller", "kd,kd"], "distiller 'kd' is listed twice"),
])
def test_the_bad_input_sweep_is_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    """Issue 32's sweep: each case exits 2 with one line and leaves no --out tree."""
    out = tmp_path / "runs"
    argv = ["run", "--preset", "smoke", "--pairs", "kdbench_vit_s_xs:kdbench_resnet18_xs", "--distiller", "kd",
            "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_out_under_a_regular_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["run", "--preset", "smoke", "--pairs", "kdbench_vit_s_xs:kdbench_resnet18_xs", "--distiller", "kd",
                 "--out", str(tmp_path / "afile" / "sub")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and err.count("\n") == 1


def test_bench_takes_a_typed_request_as_the_command_line_builds_it():
    """Scripts call `bench(BenchRequest(...))`; the CLI builds the same request from its options."""
    from kdbench.bench import BenchRequest, bench
    from kdbench.cli import build_parser
    from kdbench.requests import from_args
    args = build_parser().parse_args(["bench", "--pair", "kdbench_vit_s_xs:kdbench_resnet18_xs", "--preset", "smoke",
                                      "--distillers", "kd,rsd", "--steps", "0", "--set", "recipe.lr=0.01"])
    request = from_args(BenchRequest, args)
    assert request == BenchRequest(pair="kdbench_vit_s_xs:kdbench_resnet18_xs", preset="smoke", distillers="kd,rsd",
                                   steps=0, overrides=("recipe.lr=0.01",))
    rows = bench(request)
    assert [r["distiller"] for r in rows] == ["kd", "rsd"] and rows[1]["extra_params"] > 0


def test_plan_and_leaderboard_take_typed_requests(tmp_path, capsys):
    from kdbench.leaderboard.command import LeaderboardRequest, cmd_leaderboard
    from kdbench.plan import PlanRequest, plan
    p = plan(PlanRequest(preset="smoke", pairs="kdbench_vit_s_xs:kdbench_resnet18_xs", distiller="kd"))
    assert [c["distiller"] for c in p["cells"]] == ["kd"] and p["preset"] == "smoke"
    assert cmd_leaderboard(LeaderboardRequest(out="benchmarks/results/smoke/runs", format="csv")) == 0
    assert capsys.readouterr().out.startswith("preset,dataset,group,pair,method,teacher,")
