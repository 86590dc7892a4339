import hashlib
import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import write_image_folder, write_npz
from medprobe.core.errors import DatasetError, UnknownNameError
from medprobe.data import medmnist
from medprobe.data.datasets import TASKS, load_dataset
from medprobe.data.medmnist import medmnist_file


def test_npz_with_2d_and_1d_labels_load_the_same(tmp_path):
    two = load_dataset(write_npz(tmp_path / "two.npz", label_shape="2d"))
    one = load_dataset(write_npz(tmp_path / "one.npz", label_shape="1d"))
    assert two.task == one.task == "multi-class"
    assert np.array_equal(two.labels, one.labels)
    assert [len(two.indices(s)) for s in ("train", "val", "test")] == [40, 10, 20]
    assert np.array_equal(np.asarray(two.images.load(0)), np.asarray(one.images.load(0)))


def test_npz_binary_grayscale(tmp_path):
    data = load_dataset(write_npz(tmp_path / "b.npz", classes=2, channels=1))
    assert data.task == "binary"
    assert data.images.load(3).mode == "L"


def test_npz_without_val_gets_a_stratified_seeded_split(tmp_path):
    path = tmp_path / "noval.npz"
    full = np.load(write_npz(tmp_path / "full.npz", n_train=100, classes=4))
    np.savez(path, **{k: full[k] for k in full.files if not k.startswith("val_")})
    first, second = load_dataset(path), load_dataset(path)
    val = first.indices("val")
    assert len(val) == 10 and np.array_equal(val, second.indices("val"))
    assert np.bincount(first.labels[val]).tolist() == [3, 2, 3, 2] or len(set(first.labels[val])) == 4
    assert "val" in first.info["made_splits"]


def test_npz_with_wrong_keys_names_them(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(DatasetError, match=r"bad.npz: expected MedMNIST keys.*found \['x'\]"):
        load_dataset(tmp_path / "bad.npz")


def test_folder_with_splits_and_without(tmp_path):
    split = load_dataset(write_image_folder(tmp_path / "split", splits=("train", "val", "test"), per_class=4))
    assert split.label_names == ["a", "b"] and split.task == "binary"
    assert [len(split.indices(s)) for s in ("train", "val", "test")] == [8, 8, 8]
    flat = load_dataset(write_image_folder(tmp_path / "flat", classes=("x", "y", "z"), per_class=10))
    assert flat.task == "multi-class"
    assert [len(flat.indices(s)) for s in ("train", "val", "test")] == [21, 3, 6]
    assert flat.ids[0] == "x/x_0.png"


def test_csv_manifest_relative_paths_and_optional_split(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=10)
    rows = ["path,label,split"] + [f"imgs/{c}/{c}_{i}.png,{c},{'test' if i >= 8 else ''}" for c in "ab" for i in range(10)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(tmp_path / "m.csv")
    assert len(data.indices("test")) == 4
    assert len(data.indices("val")) == 2  # made from train: 10 % of the 20 images
    assert data.images.load(0).size == (32, 32)


@pytest.mark.parametrize(
    "row, message",
    [
        ("imgs/a/a_0.png,,", r"m.csv, row 3: missing label for imgs/a/a_0.png"),
        ("imgs/a/a_1.png,a,holdout", r"m.csv, row 3: split must be one of"),
    ],
)
def test_csv_bad_rows_are_named(tmp_path, row, message):
    write_image_folder(tmp_path / "imgs")
    (tmp_path / "m.csv").write_text(f"path,label,split\nimgs/b/b_0.png,b,\n{row}\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "m.csv")


def test_csv_missing_file_and_missing_columns(tmp_path):
    with pytest.raises(DatasetError, match="CSV manifest not found"):
        load_dataset(tmp_path / "absent.csv")
    (tmp_path / "cols.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(DatasetError, match="must have columns path,label"):
        load_dataset(tmp_path / "cols.csv")


def test_class_in_test_but_not_in_train_is_refused(tmp_path):
    write_image_folder(tmp_path / "d", classes=("a", "b"), splits=("train",), per_class=3)
    write_image_folder(tmp_path / "d", classes=("a", "b", "c"), splits=("test",), per_class=2)
    with pytest.raises(DatasetError, match=r"class 'c' appears in test \(e.g. test/c/c_0.png\) but never in train"):
        load_dataset(tmp_path / "d")


def test_single_class_train_split_is_refused(tmp_path):
    write_image_folder(tmp_path / "d", classes=("a",), splits=("train",), per_class=3)
    write_image_folder(tmp_path / "d", classes=("a", "b"), splits=("test",), per_class=2)
    with pytest.raises(DatasetError, match="train split has a single class"):
        load_dataset(tmp_path / "d")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match="^unknown dataset 'retinamnst'; did you mean 'retinamnist'") as error:
        load_dataset("retinamnst")
    assert not isinstance(error.value, DatasetError) and error.value.kind == "dataset"


def test_real_retinamnist_by_name(shared_data):
    data = load_dataset("retinamnist", data_dir=shared_data / "medmnist")
    assert data.task == "ordinal" and len(data.label_names) == 5
    assert [len(data.indices(s)) for s in ("train", "val", "test")] == [1080, 120, 400]
    assert data.info["md5"] == "bd4c0672f1bba3e3a89f0e4e876791e4"


def test_real_ham10000_folder(shared_data):
    data = load_dataset(shared_data / "ham10000_melnv")
    assert data.label_names == ["mel", "nv"] and data.task == "binary"
    assert len(data) == 2000 and set(data.splits) == {"train", "val", "test"}


def test_medmnist_lookup_order_data_dir_then_env(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("MEDPROBE_DATA", str(shared_data / "medmnist"))
    assert medmnist_file("retinamnist", download=False) == shared_data / "medmnist" / "retinamnist.npz"
    # --data-dir is searched first: a stale file there wins over the good one in MEDPROBE_DATA, and is refused.
    write_npz(tmp_path / "retinamnist.npz")
    with pytest.raises(DatasetError, match=r"retinamnist.npz has the wrong MD5.*bd4c0672f1bba3e3a89f0e4e876791e4"):
        medmnist_file("retinamnist", data_dir=tmp_path, download=False)
    with pytest.raises(DatasetError, match=r"breastmnist.npz not found in .*place it as"):
        medmnist_file("breastmnist", download=False)


# --- download path, against a server on 127.0.0.1 ----------------------------------------------


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _pretend_table(monkeypatch, md5):
    table = medmnist.medmnist_table()
    table["breastmnist"]["files"]["28"]["md5"] = md5
    monkeypatch.setattr(medmnist, "medmnist_table", lambda: table)


def test_download_good_file_is_verified_and_placed(tmp_path, monkeypatch, file_server):
    served, url = file_server
    write_npz(served / "breastmnist.npz", classes=2, channels=1)
    _pretend_table(monkeypatch, hashlib.md5((served / "breastmnist.npz").read_bytes()).hexdigest())
    monkeypatch.setenv("MEDPROBE_MEDMNIST_MIRROR", url)
    target = tmp_path / "data"
    data = load_dataset("breastmnist", data_dir=target)
    assert data.task == "binary" and (target / "breastmnist.npz").is_file()
    assert [p.name for p in target.iterdir()] == ["breastmnist.npz"]  # no partial file left behind


def test_download_with_wrong_md5_is_refused_and_removed(tmp_path, monkeypatch, file_server):
    served, url = file_server
    write_npz(served / "breastmnist.npz", classes=2)
    monkeypatch.setenv("MEDPROBE_MEDMNIST_MIRROR", url)
    target = tmp_path / "data"
    with pytest.raises(DatasetError, match=r"wrong MD5.*750601b1f35ba3300ea97c75c52ff8f6.*place it as"):
        load_dataset("breastmnist", data_dir=target)
    assert not list(target.iterdir())


def test_download_from_a_server_that_is_down(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MEDPROBE_MEDMNIST_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(DatasetError) as error:
        load_dataset("breastmnist", data_dir=tmp_path / "data")
    message = str(error.value)
    assert "download failed" in message and f"127.0.0.1:{port}/breastmnist.npz" in message
    assert "750601b1f35ba3300ea97c75c52ff8f6" in message and str(tmp_path / "data" / "breastmnist.npz") in message


def test_metadata_table_is_complete():
    table = json.loads(Path(medmnist.__file__).with_name("medmnist.json").read_text())["datasets"]
    assert {"retinamnist", "breastmnist", "pneumoniamnist", "dermamnist", "chestmnist", "bloodmnist", "organamnist"} <= set(table)
    for name, meta in table.items():
        assert meta["task"] in TASKS
        assert set(meta["files"]) == {"28", "64", "128", "224"}
        assert all(len(f["md5"]) == 32 and f["url"].startswith("https://") for f in meta["files"].values())
