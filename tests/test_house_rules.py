"""House rules that a reading of the code would otherwise have to check (house-style.md), scanned over
the whole repository's code from its syntax tree: model knowledge stays in the family table
(`kdbench/models/`), so nothing else branches on model classes or tests model names; no module
reads a global argparse namespace; only a named official deviation switches the teacher's mode."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("kdbench", "distillers", "benchmarks", "studies")
MODEL_TABLE = ROOT / "kdbench" / "models"
MODEL_CLASSES = {"ResNet", "VisionTransformer", "SwinTransformer", "MlpMixer", "ConvNeXt", "EfficientNet",
                 "ResMlp", "Deit", "MobileNetV2"}
FAMILY_WORDS = ("resnet", "vit", "deit", "swin", "mixer", "convnext", "mobilenet", "resmlp", "efficientnet")
# the one place the teacher's mode is switched: the official PAT's `teacher_train_first_step` (docs/pat.md)
TEACHER_MODE_SWITCHES = {("distillers/pat.py", "_official_clean_teacher")}


def code_files():
    return [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))
            if MODEL_TABLE not in p.parents]


def _names(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
           {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def violations(path: Path):
    tree, rel = ast.parse(path.read_text()), path.relative_to(ROOT).as_posix() if ROOT in path.parents else path.name
    out = []
    functions = {id(n): f.name for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" \
                and len(node.args) == 2 and _names(node.args[1]) & MODEL_CLASSES:
            out.append(f"{rel}:{node.lineno}: isinstance on a model class")
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) \
                and node.left.value.lower() in FAMILY_WORDS:
            out.append(f"{rel}:{node.lineno}: tests a model name for '{node.left.value}'")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("startswith", "endswith") and any(
                    isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.lower().strip("_") in FAMILY_WORDS
                    for a in node.args):
            out.append(f"{rel}:{node.lineno}: tests a model name with {node.func.attr}")
        if isinstance(node, ast.Global) and "args" in node.names:
            out.append(f"{rel}:{node.lineno}: a global args")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "train" \
                and "teacher" in ast.unparse(node.func.value) \
                and (rel, functions.get(id(node))) not in TEACHER_MODE_SWITCHES:
            out.append(f"{rel}:{node.lineno}: switches the teacher to train mode")
    return out


def test_the_house_rules_hold_over_the_whole_repository():
    files = code_files()
    assert len(files) > 90 and any("benchmarks" in p.parts for p in files)
    found = [v for p in files for v in violations(p)]
    assert found == []


def test_the_scan_finds_each_kind_of_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from timm.models.resnet import ResNet\n"
        "def f(model, name, teacher):\n"
        "    global args\n"
        "    if isinstance(model, ResNet):\n"
        "        return 1\n"
        "    if 'swin' in name or name.startswith('vit'):\n"
        "        return 2\n"
        "    teacher.train()\n")
    assert sorted(v.split(": ", 1)[1] for v in violations(bad)) == [
        "a global args", "isinstance on a model class", "switches the teacher to train mode",
        "tests a model name for 'swin'", "tests a model name with startswith"]
