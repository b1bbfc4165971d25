"""Dataset formats, label parsing and deterministic stratified splits."""
import random

import numpy as np
import pytest
from conftest import DOGS_VS_CATS, PETS, needs, write_image

from extract.datasets import assign_splits, detect_format, load_dataset
from features.errors import FeatbenchError
from features.schema import NO_LABEL, SPLITS


def test_dogs_vs_cats_labels_from_names(dvc_folder):
    ds = load_dataset(dvc_folder)
    assert ds.format == "dogs-vs-cats" and ds.class_names == ["cat", "dog"]
    labels = {it.rel: it.label for it in ds.items}
    assert labels["cat.3.jpg"] == 0 and labels["dog.3.jpg"] == 1 and len(labels) == 24


def test_dogs_vs_cats_unlabelled_test_folder(tmp_path):
    for i in range(3):
        write_image(tmp_path / "train" / f"cat.{i}.jpg", i)
        write_image(tmp_path / "train" / f"dog.{i}.jpg", 10 + i)
        write_image(tmp_path / "test" / f"{i + 1}.jpg", 20 + i)
    ds = load_dataset(tmp_path, "dogs-vs-cats")
    test = [it for it in ds.items if it.rel.startswith("test/")]
    assert len(test) == 3 and all(it.label == NO_LABEL and it.split == "test" for it in test)
    codes = assign_splits(ds.items)
    assert all(codes[i] == SPLITS.index("test") for i, it in enumerate(ds.items) if it.label == NO_LABEL)


@pytest.mark.parametrize("test_folder", ["test", "test1"])
def test_kaggle_layout_detected_with_unlabelled_test_folder(tmp_path, test_folder):
    """The Kaggle zip unpacks to train/ (cat.N.jpg, dog.N.jpg) and test1/ (N.jpg)."""
    for i in range(3):
        write_image(tmp_path / "train" / f"cat.{i}.jpg", i)
        write_image(tmp_path / "train" / f"dog.{i}.jpg", 10 + i)
        write_image(tmp_path / test_folder / f"{i + 1}.jpg", 20 + i)
    ds = load_dataset(tmp_path, "auto")
    assert ds.format == "dogs-vs-cats" and len(ds.items) == 9
    test = [it for it in ds.items if it.rel.startswith(f"{test_folder}/")]
    assert len(test) == 3 and all(it.label == NO_LABEL and it.split == "test" for it in test)


@pytest.mark.parametrize("names", [[f"{i:04d}.jpg" for i in range(1, 7)], ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]])
def test_numbered_or_camera_names_are_not_guessed(tmp_path, names):
    """0001.jpg… is not dogs-vs-cats (no label anywhere), IMG_N.jpg not a one-breed oxford-pets."""
    for i, n in enumerate(names):
        write_image(tmp_path / n, i)
    with pytest.raises(FeatbenchError, match="cannot tell the dataset format; pass --format") as err:
        load_dataset(tmp_path, "auto")
    assert "\n" not in str(err.value)


def test_unlabelled_numbered_folder_when_format_given(tmp_path):
    for i in range(1, 4):
        write_image(tmp_path / f"{i}.jpg", i)
    ds = load_dataset(tmp_path, "dogs-vs-cats")
    assert len(ds.items) == 3 and all(it.label == NO_LABEL and it.split == "test" for it in ds.items)


def test_oxford_pets_breed_and_species(tmp_path):
    names = ["Abyssinian_1.jpg", "Abyssinian_2.jpg", "great_pyrenees_10.jpg", "Bengal_3.jpg",
             "american_pit_bull_terrier_4.jpg"]
    for i, n in enumerate(names):
        write_image(tmp_path / "images" / n, i)
    breed = load_dataset(tmp_path / "images")
    assert breed.format == "oxford-pets"
    assert breed.class_names == ["Abyssinian", "Bengal", "american_pit_bull_terrier", "great_pyrenees"]
    species = load_dataset(tmp_path / "images", target="species")
    labels = {it.rel: species.class_names[it.label] for it in species.items}
    assert labels == {"Abyssinian_1.jpg": "cat", "Abyssinian_2.jpg": "cat", "great_pyrenees_10.jpg": "dog",
                      "Bengal_3.jpg": "cat", "american_pit_bull_terrier_4.jpg": "dog"}
    assert breed.name != species.name  # different stores for different targets


@needs(PETS)
def test_real_oxford_pets_subset():
    ds = load_dataset(PETS, target="breed")
    assert ds.format == "oxford-pets" and len(ds.class_names) == 32 and len(ds.items) == 693


@needs(DOGS_VS_CATS)
def test_real_dogs_vs_cats():
    assert detect_format(DOGS_VS_CATS) == "dogs-vs-cats"
    assert len(load_dataset(DOGS_VS_CATS).items) == 2000


def test_imagefolder_nested(tmp_path):
    for i in range(4):
        write_image(tmp_path / "tulip" / f"{i}.png", i)
        write_image(tmp_path / "rose" / "sub" / f"{i}.jpg", 10 + i)
    ds = load_dataset(tmp_path)
    assert ds.format == "imagefolder" and ds.class_names == ["rose", "tulip"] and len(ds.items) == 8


def test_csv_with_and_without_split(tmp_path):
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.jpg", i)
    (tmp_path / "list.csv").write_text("path,label,split\nimg/0.jpg,a,train\nimg/1.jpg,b,val\n"
                                       "img/2.jpg,a,test\nimg/3.jpg,,test\n")
    ds = load_dataset(tmp_path / "list.csv")
    assert ds.format == "csv" and ds.class_names == ["a", "b"]
    assert [it.split for it in ds.items] == ["train", "val", "test", "test"]
    assert ds.items[3].label == NO_LABEL and ds.items[0].path.is_file()
    (tmp_path / "bad.csv").write_text("file,label\nimg/0.jpg,a\n")
    with pytest.raises(FeatbenchError, match="path,label"):
        load_dataset(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("path,label,split\nimg/0.jpg,a,holdout\n")
    with pytest.raises(FeatbenchError, match="bad2.csv:2"):
        load_dataset(tmp_path / "bad2.csv")


def test_csv_from_excel_with_bom(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"{i}.jpg", i)
    (tmp_path / "list.csv").write_text("path,label\r\n0.jpg,a\r\n1.jpg,b\r\n", encoding="utf-8-sig")
    ds = load_dataset(tmp_path / "list.csv", "auto")
    assert ds.class_names == ["a", "b"] and [it.rel for it in ds.items] == ["0.jpg", "1.jpg"]


def test_csv_not_utf8_is_a_one_line_error(tmp_path):
    (tmp_path / "list.csv").write_bytes("path,label\n0.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(FeatbenchError, match="list.csv: not UTF-8 text"):
        load_dataset(tmp_path / "list.csv", "csv")


def test_csv_duplicate_path_refused_with_its_line(tmp_path):
    (tmp_path / "list.csv").write_text("path,label\nimg/0.jpg,a\nimg/1.jpg,b\n./img/0.jpg,b\n")
    with pytest.raises(FeatbenchError, match=r"list.csv:4: .*listed twice \(first on line 2\)") as err:
        load_dataset(tmp_path / "list.csv", "auto")
    assert "\n" not in str(err.value)


def test_csv_unlabelled_rows_without_split_go_to_test(tmp_path):
    rows = "".join(f"{i}.jpg,{'ab'[i % 2]}\n" for i in range(20)) + "u1.jpg,\nu2.jpg,\n"
    (tmp_path / "list.csv").write_text("path,label\n" + rows)
    ds = load_dataset(tmp_path / "list.csv", "auto")
    codes = assign_splits(ds.items)
    unlabelled = [i for i, it in enumerate(ds.items) if it.label == NO_LABEL]
    assert len(unlabelled) == 2 and all(SPLITS[codes[i]] == "test" for i in unlabelled)


def test_ambiguous_or_missing(tmp_path):
    with pytest.raises(FeatbenchError, match="no such dataset folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(FeatbenchError, match="--format"):
        load_dataset(tmp_path)


def _items(n_per_class=(100, 40, 7)):
    from extract.datasets import Item
    return [Item(None, f"c{c}/{i}.jpg", c) for c, n in enumerate(n_per_class) for i in range(n)]


def test_splits_deterministic_stratified_and_order_free():
    items = _items()
    codes = assign_splits(items, seed=0)
    assert np.array_equal(codes, assign_splits(items, seed=0))
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    by_rel = dict(zip((it.rel for it in shuffled), assign_splits(shuffled, seed=0)))
    assert [by_rel[it.rel] for it in items] == codes.tolist()
    labels = np.array([it.label for it in items])
    for c, n in enumerate((100, 40, 7)):
        counts = np.bincount(codes[labels == c], minlength=3)
        assert abs(counts[0] - 0.7 * n) <= 1 and abs(counts[1] - 0.15 * n) <= 1
    assert not np.array_equal(codes, assign_splits(items, seed=1))
    assert np.bincount(assign_splits(items, (0.8, 0.2, 0)), minlength=3)[2] == 0
    with pytest.raises(FeatbenchError):
        assign_splits(items, (0.5, -0.1, 0.6))
