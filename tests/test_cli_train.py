"""The train and evaluate commands, end to end on a tiny MedMNIST-style npz."""

import json
from pathlib import Path

import numpy as np
import pytest

from napari_scan_classifier.cli import main


def write_npz(path: Path) -> Path:
    """16^3 uint8 volumes; class 1 has a bright cube somewhere."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 24), ("val", 8), ("test", 10)):
        images = rng.integers(0, 60, (n, 16, 16, 16), dtype=np.uint8)
        labels = np.arange(n) % 2
        for i in np.flatnonzero(labels):
            z, y, x = rng.integers(3, 11, 3)
            images[i, z : z + 4, y : y + 4, x : x + 4] = 220
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.astype(np.uint8)[:, None]
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    npz = write_npz(root / "tiny.npz")
    argv = [
        "train",
        "--cases",
        str(npz),
        "--out",
        str(root / "models"),
        "--architecture",
        "cnn3d",
        "--input-shape",
        "16",
        "16",
        "16",
        "--width",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--seed",
        "1",
        "--name",
        "tiny",
    ]
    return root, npz, argv


@pytest.mark.slow
def test_train_prints_progress_and_metrics_then_evaluate_prints_json(trained, capsys):
    root, npz, argv = trained

    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "epoch 2/2" in printed
    assert "validation: n 8" in printed
    assert "decision rule: the class with the highest calibrated probability: the " in printed
    assert "cases per class: train: 0 12, 1 12; validation: 0 4, 1 4" in printed
    bundle = root / "models" / "tiny-v1"
    assert (bundle / "bundle.json").is_file() and (bundle / "roc.png").is_file()

    assert main(["evaluate", "--model", str(bundle), "--cases", str(npz), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"auc", "accuracy", "sensitivity", "specificity", "ece", "n"} <= set(report)
    assert report["n"] == 10  # the test split by default

    assert main(["evaluate", "--model", str(bundle), "--cases", str(npz), "--split", "val"]) == 0
    assert capsys.readouterr().out.startswith("n 8  auc")

    assert (
        main(
            [
                "train",
                "--cases",
                str(npz),
                "--out",
                str(root / "models"),
                "--base",
                str(bundle),
                "--epochs",
                "1",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "saved tiny version 2" in printed and "base model (version 1)" in printed
    assert "verdict: Compared with version 1 on the same 8 validation cases: AUC " in printed
    assert "warning: Too few validation cases to tell (0: 4, 1: 4; at least 10" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--cases", "missing.npz", "--out", "out"], "no such file"),
        (
            ["train", "--cases", "x.npz", "--out", "o", "--base", "b", "--width", "4"],
            "--width only apply when training from scratch",
        ),
        (
            ["train", "--cases", "x.npz", "--out", "o", "--imbalance", "none", "--epochs", "0"],
            "epochs",
        ),
        (["evaluate", "--model", "no_model", "--cases", "x.npz"], "no_model"),
    ],
)
def test_errors_are_one_line_without_a_traceback(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_training_data_is_named_by_place_and_shown_only_with_show_paths(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--cases", "Doe_Jane/cases.npz", "--out", "out"]

    assert main(argv) == 2
    plain = capsys.readouterr().err
    assert main(["--show-paths", *argv]) == 2
    shown = capsys.readouterr().err

    assert plain == "error: <input 1> (training data): no such file or folder\n"
    assert shown == (
        f"input 1 is {Path.cwd() / 'Doe_Jane' / 'cases.npz'}\n"
        "error: <input 1> (training data): no such file or folder\n"
    )


def test_evaluate_rejects_a_split_the_data_lack(tmp_path, capsys):
    npz = write_npz(tmp_path / "tiny.npz")
    from napari_scan_classifier.models import Bundle, BundleMetadata, build_cnn3d, save_bundle

    metadata = BundleMetadata(
        name="tiny",
        version=1,
        classes=["0", "1"],
        modality="CT",
        task="volume",
        input_shape=(16, 16, 16),
        target_spacing_mm=None,
        intensity={"kind": "ct_window", "center": 40.0, "width": 400.0},
        architecture="cnn3d",
    )
    bundle = save_bundle(Bundle(metadata, build_cnn3d((16, 16, 16, 1), 2, width=4)), tmp_path / "m")

    assert main(["evaluate", "--model", str(bundle), "--cases", str(npz), "--split", "all"]) == 2
    assert "no split 'all'" in capsys.readouterr().err


def untrained_bundle(folder: Path, classes: list[str]) -> Path:
    from napari_scan_classifier.models import Bundle, BundleMetadata, build_cnn3d, save_bundle

    metadata = BundleMetadata(
        name="tiny",
        version=1,
        classes=classes,
        modality="CT",
        task="volume",
        input_shape=(16, 16, 16),
        target_spacing_mm=None,
        intensity={"kind": "ct_window", "center": 40.0, "width": 400.0},
        architecture="cnn3d",
    )
    return save_bundle(Bundle(metadata, build_cnn3d((16, 16, 16, 1), 2, width=4)), folder)


def test_evaluate_takes_a_test_only_npz_named_by_classes_not_by_its_file_name(tmp_path, capsys):
    with np.load(write_npz(tmp_path / "full.npz")) as full:
        test_only = {key: full[key] for key in ("test_images", "test_labels")}
    plain, renamed = tmp_path / "held_out.npz", tmp_path / "adrenalmnist3d_64.npz"
    for path in (plain, renamed):
        np.savez(path, **test_only)
    bundle = untrained_bundle(tmp_path / "m", ["normal", "lesion"])

    reports = []
    for path in (plain, renamed):
        argv = ["evaluate", "--model", str(bundle), "--cases", str(path), "--json"]
        assert main([*argv, "--classes", "normal", "lesion"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            "error: Cases labelled '0', '1' are not among the model's classes ['normal', "
            "'lesion']; evaluate on data with the model's classes only; name an npz file's "
            "label indices with --classes\n"
        )

    assert reports[0] == reports[1]  # renaming the file changes nothing
    assert reports[0]["n"] == 10 and reports[0]["class_counts"] == {"normal": 5, "lesion": 5}


def test_evaluate_a_three_class_model_per_class_with_figures(tmp_path, capsys):
    from napari_scan_classifier.models import Bundle, BundleMetadata, build_cnn3d, save_bundle

    rng = np.random.default_rng(3)
    labels = np.arange(12) % 3
    images = rng.integers(0, 60, (12, 16, 16, 16), dtype=np.uint8)
    images[labels == 1, 4:8, 4:8, 2:6] = 220  # class 1: a bright cube on one side
    images[labels == 2, 4:8, 4:8, 10:14] = 220  # class 2: on the other
    npz = tmp_path / "three.npz"
    np.savez(npz, test_images=images, test_labels=labels.astype(np.uint8)[:, None])
    metadata = BundleMetadata(
        name="tiny3",
        version=1,
        classes=["normal", "tumour", "infarct"],
        modality="CT",
        task="volume",
        input_shape=(16, 16, 16),
        target_spacing_mm=None,
        intensity={"kind": "ct_window", "center": 40.0, "width": 400.0},
        architecture="cnn3d",
    )
    model = build_cnn3d((16, 16, 16, 1), 3, width=4)
    bundle = save_bundle(Bundle(metadata, model), tmp_path / "m")
    argv = ["evaluate", "--model", str(bundle), "--cases", str(npz), "--classes"]
    argv += ["normal", "tumour", "infarct"]

    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main([*argv, "--figures", str(tmp_path / "figures")]) == 0
    printed = capsys.readouterr().out.splitlines()

    assert report["class_counts"] == {"normal": 4, "tumour": 4, "infarct": 4}
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum(axis=1).tolist() == [4, 4, 4]
    assert printed[0].startswith(f"n 12  macro auc {report['auc']:.3f}  accuracy ")
    assert "macro sensitivity" in printed[0] and "macro specificity" in printed[0]
    assert printed[2] == "each class against the rest:"
    for line, name in zip(printed[3:6], ("normal", "tumour", "infarct"), strict=True):
        m = report["per_class"][name]
        assert line.startswith(f"  {name}: n 4, AUC {m['auc']:.3f}, sensitivity ")
    assert np.mean([m["auc"] for m in report["per_class"].values()]) == pytest.approx(report["auc"])
    assert printed[6:8] == ["confusion matrix:", "  true \\ called  normal  tumour  infarct"]
    assert [int(v) for v in printed[8].split()[1:]] == matrix[0].tolist()
    assert [int(v) for v in printed[10].split()[1:]] == matrix[2].tolist()
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["confusion.png", "reliability.png", "roc.png"]
    assert printed[-1] == "wrote roc.png, confusion.png, reliability.png into the --figures folder"


def test_train_sets_and_clears_the_mirror_image_answer(tmp_path, capsys):
    npz = write_npz(tmp_path / "tiny.npz")
    common = ["--cases", str(npz), "--epochs", "1", "--batch-size", "4"]
    scratch = ["--architecture", "cnn3d", "--input-shape", "16", "16", "16", "--width", "4"]
    argv = ["train", *common, *scratch, "--name", "tiny", "--test-time-mirror"]
    assert main([*argv, "--out", str(tmp_path / "on")]) == 0
    first = tmp_path / "on" / "tiny-v1"
    assert json.loads((first / "bundle.json").read_text())["test_time_mirror"] is True
    argv = ["train", *common, "--base", str(first), "--no-test-time-mirror"]
    assert main([*argv, "--out", str(tmp_path / "off")]) == 0
    second = tmp_path / "off" / "tiny-v2"
    assert json.loads((second / "bundle.json").read_text())["test_time_mirror"] is False
    capsys.readouterr()
