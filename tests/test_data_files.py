"""User data files: .npz, .csv and image folders, through bastion.data.load_dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bastion.data import load_dataset
from bastion.data.files import load_path
from bastion.errors import UsageError


def _blobs(n: int = 120, k: int = 3, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    x = rng.normal(size=(len(y), d)) + 3.0 * y[:, None]
    return x, y


def test_npz_with_and_without_test_split(tmp_path):
    x, y = _blobs()
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    d = load_dataset(path)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert (len(d.y_train), len(d.y_test)) == (96, 24)
    assert torch.bincount(d.y_test).tolist() == [8, 8, 8]  # stratified
    assert d.n_classes == 3 and d.input_shape == (4,)
    assert d.bounds == pytest.approx((x.min(), x.max()), rel=1e-6)
    # every sample lands in exactly one split, unchanged
    both = torch.cat([d.x_train, d.x_test]).numpy()
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, x.astype(np.float32).tolist()))
    assert torch.equal(load_dataset(path).x_test, d.x_test)  # seeded
    assert not torch.equal(load_dataset(path, seed=1).x_test, d.x_test)
    assert len(load_dataset(path, test_fraction=0.5).y_test) == 60
    # the split the file did not have is said, with its numbers (the CLI prints meta["split"])
    assert d.meta["split"] == (
        "no test split in the file: split 120 samples into 96 train / 24 test "
        "(stratified, test_fraction=0.2, seed=20260101)"
    )

    imgs = tmp_path / "imgs.npz"
    xi = np.random.default_rng(1).random((20, 1, 4, 4))
    np.savez(imgs, x=xi[:15], y=np.arange(15) % 2, x_test=xi[15:], y_test=np.arange(5) % 2)
    d = load_dataset(imgs)
    assert d.bounds == (0.0, 1.0) and d.input_shape == (1, 4, 4)
    assert torch.allclose(d.x_test, torch.tensor(xi[15:], dtype=torch.float32))
    assert "split" not in d.meta  # the file's own split: nothing to say


def test_npz_errors(tmp_path):
    x, y = _blobs()
    bad = x.copy()
    bad[5, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=y)
    with pytest.raises(UsageError, match=r"nan.npz.*NaN"):
        load_dataset(tmp_path / "nan.npz")
    np.savez(tmp_path / "neg.npz", x=x, y=y - 1)
    with pytest.raises(UsageError, match=r"0..K-1"):
        load_dataset(tmp_path / "neg.npz")
    np.savez(tmp_path / "noy.npz", features=x)
    with pytest.raises(UsageError, match="'x' and 'y'"):
        load_dataset(tmp_path / "noy.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(UsageError, match="unpickling"):
        load_dataset(tmp_path / "obj.npz")
    with pytest.raises(UsageError, match="unknown option"):
        load_dataset(tmp_path / "neg.npz", label_column="y")


def _write_csv(path, rows, header):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")


def test_csv_string_labels_and_scaling(tmp_path):
    x, y = _blobs(n=60, k=3, d=3)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    path = tmp_path / "iris.csv"
    _write_csv(path, [[*map(float, r), n] for r, n in zip(x, names)], ["a", "b", "c", "species"])
    d = load_dataset(path)  # no 'label' column: the last column is the label
    assert d.meta["classes"] == ["setosa", "versicolor", "virginica"] and d.n_classes == 3
    assert d.feature_names == ["a", "b", "c"]
    assert d.meta["split"].startswith("no test split in the file: split 60 samples into 48 train / 12 test")
    assert d.bounds == pytest.approx((x.min(), x.max()), rel=1e-5)  # tabular: not rescaled
    assert float(torch.cat([d.x_train, d.x_test]).max()) == pytest.approx(x.max(), rel=1e-5)
    s = load_dataset(path, scale=True)
    assert s.bounds == (0.0, 1.0)
    assert s.x_train.min() == 0.0 and s.x_train.max() == 1.0 and 0 <= s.x_test.min() and s.x_test.max() <= 1
    lo, hi = torch.tensor(s.meta["scale_min"]), torch.tensor(s.meta["scale_max"])
    assert torch.allclose(s.x_train * (hi - lo) + lo, d.x_train, atol=1e-5)  # same split, same samples

    # a label column named explicitly, placed first, with integer labels
    p2 = tmp_path / "first.csv"
    _write_csv(p2, [[int(k), *r] for k, r in zip(y, x)], ["target", "a", "b", "c"])
    d2 = load_dataset(p2, label_column="target")
    assert d2.feature_names == ["a", "b", "c"] and "classes" not in d2.meta
    assert torch.equal(torch.sort(torch.cat([d2.y_train, d2.y_test])).values, torch.tensor(np.sort(y)))


def test_csv_errors(tmp_path):
    p = tmp_path / "nan.csv"
    _write_csv(p, [[1.0, 2.0, 0], [3.0, "", 1], [4.0, 5.0, 0], [1.0, 1.0, 1]], ["a", "b", "label"])
    with pytest.raises(UsageError, match=r"nan.csv.*NaN"):
        load_dataset(p)
    p = tmp_path / "text.csv"
    _write_csv(p, [[1.0, "red", 0], [3.0, "blue", 1], [4.0, "red", 0], [1.0, "red", 1]], ["a", "colour", "label"])
    with pytest.raises(UsageError, match="column 'colour' is not numeric"):
        load_dataset(p)
    with pytest.raises(UsageError, match="no column 'y'"):
        load_dataset(p, label_column="y")


def _png(path, arr):
    Image.fromarray(arr).save(path)


def test_image_folder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    written = {}
    for cls in ["cat", "dog", "ant"]:
        (root / cls).mkdir(parents=True)
        for i in range(5):
            arr = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
            _png(root / cls / f"{i}.png", arr)
            written[(cls, i)] = arr
    (root / "cat" / "notes.txt").write_text("ignored")
    d = load_dataset(root, test_fraction=0.2)
    assert d.meta["classes"] == ["ant", "cat", "dog"] and d.n_classes == 3
    assert d.input_shape == (3, 6, 7) and d.bounds == (0.0, 1.0)
    assert (len(d.y_train), len(d.y_test)) == (12, 3) and "15 samples into 12 train / 3 test" in d.meta["split"]
    # each loaded image equals a written one (/255, CHW) of the same class
    for xi, yi in zip(torch.cat([d.x_train, d.x_test]), torch.cat([d.y_train, d.y_test])):
        cls = d.meta["classes"][int(yi)]
        hwc = (xi.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert any(np.array_equal(hwc, written[(cls, i)]) for i in range(5))
    g = load_path(root, grayscale=True, size=(4, 4))
    assert g.input_shape == (1, 4, 4)


def test_image_folder_gray_split_and_shape_errors(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "mnistish"
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("0", "1"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                _png(root / split / cls / f"{i}.png", rng.integers(0, 256, size=(5, 5), dtype=np.uint8))
    d = load_dataset(root)
    assert d.input_shape == (1, 5, 5) and (len(d.y_train), len(d.y_test)) == (8, 4)
    assert "split" not in d.meta  # train/ and test/ folders: the folder's own split
    bad = tmp_path / "mixed"
    for cls in ("a", "b"):
        (bad / cls).mkdir(parents=True)
        _png(bad / cls / "x.png", rng.integers(0, 256, size=(5, 5), dtype=np.uint8))
    _png(bad / "b" / "y.png", rng.integers(0, 256, size=(6, 5), dtype=np.uint8))
    with pytest.raises(UsageError, match=r"images differ in shape.*size="):
        load_dataset(bad)
    assert load_dataset(bad, size=(5, 5), test_fraction=0.34).input_shape == (1, 5, 5)
