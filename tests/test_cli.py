import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BASTION = str(Path(sys.executable).parent / "bastion")
KEYS = {"clean_accuracy", "robust_accuracy", "success_rate", "median_perturbation", "queries", "seconds", "n_inputs"}


def run(*args: str, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """The single stderr line of a usage error (exit code 2, no traceback)."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_attack_json_is_one_object_with_the_documented_keys():
    p = run(
        "attack",
        "--model",
        "zoo:mnist-cnn",
        "--data",
        "mnist5k",
        "--attack",
        "pgd",
        "--eps",
        "0.3",
        "--n",
        "100",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) == KEYS and out["n_inputs"] == 100
    assert out["clean_accuracy"] > 0.9 and out["robust_accuracy"] <= 0.02 and out["success_rate"] >= 0.98
    assert 0.2 < out["median_perturbation"] <= 0.3 + 1e-6 and out["queries"] > 100


def test_attack_table_on_a_terminal_free_run():
    p = run("attack", "--model", "zoo:digits-mlp", "--data", "digits", "--attack", "fgsm", "--eps", "0.1", "--n", "50")
    assert p.returncode == 0, p.stderr
    for word in (
        "clean accuracy",
        "robust accuracy",
        "attack success rate",
        "median perturbation",
        "model queries",
        "seconds",
    ):
        assert word in p.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--eps", "-0.1"], "--eps"),
        (["--attack", "nope"], "--attack"),
        (["--norm", "l3"], "--norm"),
        (["--data", "/nonexistent.npz"], "nonexistent"),
        (["--data", "digits"], "shape"),
        (["--model", "zoo:resnet"], "resnet"),
        (["--attack", "fgsm", "--steps", "3"], "--steps"),
        (["--n", "0"], "--n"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, needle):
    base = {"--model": "zoo:mnist-cnn", "--data": "mnist5k", "--attack": "pgd", "--n": "10"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["attack"] + [t for kv in base.items() for t in kv]
    p = run(*argv)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 2


def test_zoo_lists_models_and_datasets():
    p = run("zoo", "--json")
    assert p.returncode == 0
    out = json.loads(p.stdout)
    assert {"digits-mlp", "mnist-cnn", "cancer-mlp", "cancer-gbt"} <= set(out["models"])
    assert {"digits", "mnist5k", "breast-cancer"} <= set(out["datasets"])


def test_train_then_attack_the_saved_model(tmp_path):
    out = tmp_path / "m.safetensors"
    p = run("train", "--arch", "digits-mlp", "--data", "digits", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["test_accuracy"] >= 0.95 and out.exists()
    p = run(
        "attack", "--model", str(out), "--data", "digits", "--attack", "pgd", "--eps", "0.2", "--n", "100", "--json"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["robust_accuracy"] < 0.2


def test_help_lists_commands():
    p = run("--help")
    assert p.returncode == 0 and all(c in p.stdout for c in ("attack", "zoo", "train"))


def test_minimum_norm_attacks_use_their_own_norm_and_no_eps():
    p = run("attack", "--model", "zoo:mnist-cnn", "--data", "mnist5k", "--attack", "deepfool", "--n", "50", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["success_rate"] >= 0.95 and 0.5 < out["median_perturbation"] < 3.0  # an L2 norm, unbounded attack
    p = run("attack", "--model", "zoo:mnist-cnn", "--data", "mnist5k", "--attack", "cw", "--norm", "linf", "--n", "5")
    assert p.returncode == 2 and "l2" in p.stderr
    p = run("attack", "--model", "zoo:mnist-cnn", "--data", "mnist5k", "--attack", "deepfool", "--targeted", "--n", "5")
    assert p.returncode == 2 and "untargeted" in p.stderr


def test_black_box_attack_with_query_budget_on_a_tree_model():
    p = run(
        "attack",
        "--model",
        "zoo:cancer-gbt",
        "--data",
        "breast-cancer",
        "--attack",
        "square",
        "--eps",
        "0.3",
        "--max-queries",
        "300",
        "--n",
        "60",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["clean_accuracy"] > 0.9 and out["robust_accuracy"] < 0.5
    assert 60 <= out["queries"] <= 60 * 300
    p = run("attack", "--model", "zoo:cancer-gbt", "--data", "breast-cancer", "--attack", "pgd", "--n", "5")
    assert p.returncode == 2 and "black-box" in p.stderr
    p = run(
        "attack", "--model", "zoo:mnist-cnn", "--data", "mnist5k", "--attack", "pgd", "--max-queries", "5", "--n", "5"
    )
    assert p.returncode == 2 and "--max-queries" in p.stderr


@pytest.mark.slow
def test_patch_attack_writes_its_png(tmp_path):
    from PIL import Image

    out = tmp_path / "patch.png"
    p = run(
        "attack",
        "--model",
        "zoo:mnist-cnn",
        "--data",
        "mnist5k",
        "--attack",
        "patch",
        "--n",
        "64",
        "--save-patch",
        str(out),
        "--json",
    )
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)) == KEYS
    img = Image.open(out)
    assert img.size[0] * img.size[1] <= 0.1 * 28 * 28  # the patch covers at most 10% of the image
    p = run(
        "attack",
        "--model",
        "zoo:mnist-cnn",
        "--data",
        "mnist5k",
        "--attack",
        "pgd",
        "--n",
        "4",
        "--save-patch",
        str(out),
    )
    assert p.returncode == 2 and "--save-patch" in p.stderr


CONSTRAINTS_TOML = """
immutable = ["mean radius", "mean texture", 2, 3, 4]
norm = "linf"
eps = 0.2
[integer]
"worst texture" = { scale = [12.02, 49.54] }   # integral in original units
[categorical]
"mean symmetry" = [0.0, 0.25, 0.5, 0.75, 1.0]
[ranges]
"worst area" = [0.0, 0.5]
"""


def test_tabular_attack_reads_a_constraints_file(tmp_path):
    spec = tmp_path / "cons.toml"
    spec.write_text(CONSTRAINTS_TOML)
    p = run(
        "attack",
        "--model",
        "zoo:cancer-gbt",
        "--data",
        "breast-cancer",
        "--attack",
        "tabular",
        "--constraints",
        str(spec),
        "--n",
        "114",
        "--max-queries",
        "300",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == KEYS | {"snapped_records"}
    assert out["success_rate"] >= 0.5 and 0.19 < out["median_perturbation"] <= 0.2 + 1e-6
    # the same file as JSON, with the budget overridden on the command line
    (tmp_path / "cons.json").write_text(json.dumps({"immutable": list(range(10)), "norm": "l2", "eps": 0.5}))
    p = run(
        "attack",
        "--model",
        "zoo:cancer-gbt",
        "--data",
        "breast-cancer",
        "--attack",
        "tabular",
        "--constraints",
        str(tmp_path / "cons.json"),
        "--eps",
        "0.0",
        "--n",
        "50",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["robust_accuracy"] == json.loads(p.stdout)["clean_accuracy"]


@pytest.mark.parametrize(
    "text,suffix,needle",
    [
        ('{"immutable": ["no such feature"]}', ".json", "unknown feature 'no such feature'"),
        ('{"immutable": [4], "integer": [4]}', ".json", "both immutable and integer"),
        ('{"colour": 1}', ".json", "unknown constraint keys"),
        ("immutable = [", ".toml", "not valid TOML"),
        ("[1, 2]", ".json", "one mapping"),
        ("{}", ".yaml", ".json or .toml"),
    ],
)
def test_bad_constraint_files_exit_2_with_one_line(tmp_path, text, suffix, needle):
    spec = tmp_path / f"cons{suffix}"
    spec.write_text(text)
    p = run(
        "attack",
        "--model",
        "zoo:cancer-gbt",
        "--data",
        "breast-cancer",
        "--attack",
        "tabular",
        "--constraints",
        str(spec),
        "--n",
        "5",
    )
    assert p.returncode == 2 and needle in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


# -- what a new user hit: flags the errors name, output paths checked first, the split said -----------------
def test_save_patch_into_a_missing_folder_exits_2_before_any_work(tmp_path):
    """Nothing loads before the output path is checked: with an empty model cache, loading zoo:mnist-cnn would
    train it into that cache (about a minute); the cache stays empty."""
    home = tmp_path / "empty-home"
    home.mkdir()
    env = {**os.environ, "BASTION_HOME": str(home)}
    base = ["attack", "--model", "zoo:mnist-cnn", "--data", "mnist5k", "--attack", "patch", "--n", "8"]
    err = one_line_error(run(*base, "--save-patch", "/no/such/dir/p.png", env=env))
    assert "--save-patch" in err and "/no/such/dir" in err and "does not exist" in err
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "not a folder" in one_line_error(run(*base, "--save-patch", str(a_file / "p.png"), env=env))
    (tmp_path / "dir.png").mkdir()
    assert "is a folder" in one_line_error(run(*base, "--save-patch", str(tmp_path / "dir.png"), env=env))
    assert list(home.iterdir()) == []


@pytest.fixture(scope="module")
def torchscript_cnn(tmp_path_factory):
    """zoo:mnist-cnn saved as TorchScript: a file that records neither its input shape nor its classes."""
    import torch

    from bastion.models.zoo import load_zoo

    path = tmp_path_factory.mktemp("ts") / "cnn.pt"
    module = load_zoo("mnist-cnn").module.eval()
    torch.jit.save(torch.jit.trace(module, torch.zeros(1, 1, 28, 28)), str(path))
    return path


@pytest.mark.slow
def test_a_torchscript_model_takes_input_shape_from_the_flag(torchscript_cnn):
    base = ["attack", "--model", str(torchscript_cnn), "--data", "mnist5k", "--attack", "fgsm", "--n", "20"]
    err = one_line_error(run(*base, "--json"))
    assert "--input-shape" in err and "input_shape=" not in err
    p = run(*base, "--input-shape", "1,28,28", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["n_inputs"] == 20 and out["clean_accuracy"] > 0.9
    assert "--input-shape" in one_line_error(run(*base, "--input-shape", "1,28,x"))
    assert "--n-classes must be >= 2" in one_line_error(run(*base, "--input-shape", "1,28,28", "--n-classes", "1"))


def test_weights_without_an_architecture_name_the_flag(tmp_path):
    from safetensors.torch import save_file

    from bastion.models.zoo import load_zoo

    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in load_zoo("digits-mlp").module.state_dict().items()}, str(path))
    err = one_line_error(run("attack", "--model", str(path), "--data", "digits", "--n", "5"))
    assert "pass --arch" in err and "arch=" not in err
    p = run("attack", "--model", str(path), "--arch", "digits-mlp", "--data", "digits", "--n", "5", "--json")
    assert p.returncode == 0, p.stderr


def test_a_csv_label_column_flag_and_the_split_it_gets_are_said(tmp_path):
    from bastion.data import load_dataset

    cancer = load_dataset("breast-cancer")
    rows = [[int(label), *map(float, x)] for x, label in zip(cancer.x_test, cancer.y_test)]
    path = tmp_path / "cancer.csv"
    path.write_text(
        "\n".join([",".join(["diagnosis", *cancer.feature_names])] + [",".join(map(str, r)) for r in rows]) + "\n"
    )
    base = ["attack", "--model", "zoo:cancer-mlp", "--data", str(path), "--attack", "fgsm", "--eps", "0.1"]
    p = run(*base, "--label-column", "diagnosis", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["n_inputs"] == 23  # 20% of 114 records: the test split made for the file
    assert "no test split in the file: split 114 samples into 91 train / 23 test" in p.stderr
    err = one_line_error(run(*base, "--label-column", "no such column"))
    assert "no column 'no such column'" in err
    # a column that is not numeric: the hint names the flag, not the library's parameter
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0] + ",colour"] + [r + ",red" for r in text[1:]]) + "\n")
    err = one_line_error(run(*base, "--label-column", "diagnosis"))
    assert "--label-column 'colour'" in err and "label_column=" not in err


def test_the_readme_constraints_example_fits_its_own_data(tmp_path):
    """The README's constraints file, run as the README says (zoo:cancer-gbt on breast-cancer): records that
    already satisfy it are not moved. Declaring a continuous feature integer or categorical snaps every record
    (breast-cancer has no integral or categorical feature), which is what the example did."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    spec = tmp_path / "cons.toml"
    spec.write_text(text.split("```toml\n", 1)[1].split("```", 1)[0])
    p = run(
        *("attack", "--model", "zoo:cancer-gbt", "--data", "breast-cancer", "--attack", "tabular"),
        *("--constraints", str(spec), "--max-queries", "300", "--json"),
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["snapped_records"] == 0, f"the README's example moves {out['snapped_records']} of {out['n_inputs']}"
    assert out["success_rate"] >= 0.5
