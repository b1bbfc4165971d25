"""Dataset formats, label parsing and deterministic stratified splits."""
import os
import random
from pathlib import Path

import numpy as np
import pytest

from extract.datasets import assign_splits, detect_format, load_dataset
from features.errors import FeatbenchError
from features.schema import NO_LABEL, SPLITS

from conftest import DOGS_VS_CATS, PETS, needs, write_image


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
    write_image(tmp_path / "a" / "b" / "0.jpg", 0)  # an image, but in no layout
    with pytest.raises(FeatbenchError, match="cannot tell the dataset format; pass --format"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("entries", [[], ["notes.txt", ".hidden.jpg"], ["empty/", "deeper/still/", "a/readme.md"]])
def test_a_folder_without_images_says_so(tmp_path, entries):
    """An empty folder, or one with no file named like an image at any depth, is not an unknown format."""
    root = tmp_path / "data"
    root.mkdir()
    for e in entries:
        (root / e).parent.mkdir(parents=True, exist_ok=True)
        (root / e).mkdir() if e.endswith("/") else (root / e).write_text("x")
    with pytest.raises(FeatbenchError) as err:
        load_dataset(root)
    assert str(err.value) == (f"{root}: no image files in this folder or its sub-folders (named .bmp, .gif, .jpeg, "
                              ".jpg, .png, .ppm, .tif, .tiff, .webp); check --data or the [dataset] path in "
                              "featbench.toml")


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


def test_oxford_pets_from_its_root_lists_what_it_cannot_label(tmp_path):
    root = tmp_path / "My Pets!"
    names = [f"{breed}_{i}.jpg" for breed in ("Bengal", "pug") for i in range(5)] + ["README.jpg"]
    for i, n in enumerate(names):
        write_image(root / "images" / n, i)
    ds = load_dataset(root, target="species")  # 10 of 11 names are Breed_N: detected as oxford-pets
    images = (root / "images").resolve()  # the root is images/, as with --data root/images: one dataset
    assert ds.format == "oxford-pets" and ds.name == "my-pets-species" and ds.root == images
    assert [it.rel for it in ds.items] == sorted(names[:-1])
    assert [it.label for it in ds.items] == [0] * 5 + [1] * 5 and ds.class_names == ["cat", "dog"]
    assert ds.unlisted == [("README.jpg", "no breed in file name (expected Breed_N.jpg)")]
    assert ds.describe() == {"root": str(images), "format": "oxford-pets", "name": "my-pets-species",
                             "target": "species", "classes": 2, "files": 11, "listing": ds.listing()}
    assert load_dataset(root / "images", target="species") == ds  # images/ is named after its parent


def test_oxford_pets_unread_sub_folders_are_listed_with_the_reason(tmp_path):
    """A sub-folder of the pets' images folder is not read, and not lost: it is unlisted with the reason; an empty
    or hidden one is nothing."""
    for i, n in enumerate(f"{breed}_{k}.jpg" for breed in ("Abyssinian", "beagle") for k in range(3)):
        write_image(tmp_path / "pets" / "images" / n, i)
    write_image(tmp_path / "pets" / "images" / "more" / "Abyssinian_9.jpg", 10)
    write_image(tmp_path / "pets" / "images" / "more" / "beagle_9.jpg", 11)
    write_image(tmp_path / "pets" / "images" / ".cache" / "beagle_8.jpg", 12)
    (tmp_path / "pets" / "images" / "empty").mkdir()
    ds = load_dataset(tmp_path / "pets")
    assert ds.format == "oxford-pets" and len(ds.items) == 6
    assert ds.unlisted == [("more", "not read: an Oxford-IIIT Pet dataset's images are in one folder; list these "
                                    "in a CSV of path,label[,split] to use them")]


def test_dogs_vs_cats_lists_unlabelled_names_with_the_reason(dvc_folder):
    write_image(dvc_folder / "horse.1.jpg", 1)
    ds = load_dataset(dvc_folder, "dogs-vs-cats", name="mine")
    assert ds.unlisted == [("horse.1.jpg", "no label in file name (expected cat.N.jpg, dog.N.jpg or N.jpg)")]
    assert ds.name == "mine" and ds.target == "" and ds.describe()["files"] == 25
    assert [it.rel for it in ds.items] == sorted(it.rel for it in ds.items)


def test_imagefolder_skips_hidden_folders_and_loose_files(tmp_path):
    for i in range(2):
        write_image(tmp_path / "train" / "b" / f"{i}.jpg", i)
        write_image(tmp_path / "train" / "a" / f"{i}.jpg", 10 + i)
    write_image(tmp_path / "train" / ".thumbs" / "0.jpg", 20)
    write_image(tmp_path / "train" / "a" / ".hidden.jpg", 21)
    write_image(tmp_path / "train" / "loose.jpg", 22)
    ds = load_dataset(tmp_path / "train", "imagefolder")
    assert ds.class_names == ["a", "b"] and ds.name == f"{tmp_path.name.lower()}-train"
    assert [(it.rel, it.label) for it in ds.items] == [("a/0.jpg", 0), ("a/1.jpg", 0), ("b/0.jpg", 1), ("b/1.jpg", 1)]
    assert ds.unlisted == [("loose.jpg", "not in a class folder (an imagefolder dataset has one folder per class)")]
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "x.jpg", 0)
    with pytest.raises(FeatbenchError, match="flat: no class sub-folders; an imagefolder dataset has one folder"):
        load_dataset(tmp_path / "flat", "imagefolder")


def test_csv_paths_quoting_and_names(tmp_path):
    elsewhere = write_image(tmp_path / "far" / "x.jpg", 0)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "My List.csv").write_text(
        f'path,label,split\r\n{elsewhere},"b, with comma",val\r\n"new\r\nline.jpg",a, train \r\n', newline="")
    ds = load_dataset(tmp_path / "lists" / "My List.csv", "csv")
    assert ds.root == (tmp_path / "lists").resolve() and ds.name == "my-list" and ds.class_names == ["a", "b, with comma"]
    by_rel = {it.rel: it for it in ds.items}
    assert by_rel[str(elsewhere)].path == elsewhere and by_rel[str(elsewhere)].label == 1
    quoted = by_rel["new\r\nline.jpg"]
    assert quoted.path == tmp_path / "lists" / "new\r\nline.jpg" and (quoted.label, quoted.split) == (0, "train")


@pytest.mark.parametrize("text,message", [
    ("", r"needs a header with columns path,label\[,split\]"),
    ("path,split\nx.jpg,train\n", r"needs a header with columns path,label\[,split\]"),
    ("path,label,split\nx.jpg,a,dev\n", r"list.csv:2: split 'dev' is not one of train, val, test"),
    ("path,label\nx.jpg,a\nx\0.jpg,a\n", r"list.csv:3: the path contains a NUL byte$"),
    ("path,label\nimgs/a,b.jpg,cat\n", r"list.csv:2: 3 fields where the header has 2 \(path,label\); put a path or "
     r"label with a comma in double quotes, and give every row each column \(an empty label: a trailing comma\)$"),
    ("path,label\na.jpg,cat\n\nb.jpg\n", r"list.csv:4: 1 field where the header has 2 \(path,label\)"),
    ('path,label\n"multi\nline.jpg",cat\nc.jpg,dog,train\n', r"list.csv:4: 3 fields where the header has 2"),
    ("path,label\n,cat\n", r"list.csv:2: the path is empty; fill it in or delete the row$"),
    ("path,label,split\na.jpg,cat,train\n,,train\n", r"list.csv:3: the path is empty; fill it in or delete the row$"),
    ("path,label,split\na.jpg,cat,train\nb.jpg,,val\n", r"list.csv:3: b.jpg is in the val split but has no label; "
     r"label it, or give it the test split \(or none\): an unlabelled image is a test image$"),
    ("path,label,path\na.jpg,cat,b.jpg\n", r"list.csv:1: column 'path' is in the header twice; keep one$"),
    ("path,label\na.jpg,dog\nb.jpg,cat\nc.jpg, Dog\n",
     r"list.csv:4: label 'Dog' differs only by case from 'dog' \(line 2\); spell each class one way$"),
    ("path,label\na.jpg,cat\n" + "x" * 200_000 + ",cat\n", r"list.csv:3: not valid CSV \(field larger than"),
])
def test_csv_errors_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "list.csv").write_text(text)
    with pytest.raises(FeatbenchError, match=message) as err:
        load_dataset(tmp_path / "list.csv")
    assert "\n" not in str(err.value)


def test_csv_fields_lose_surrounding_whitespace(tmp_path):
    """` dog`, `dog ` and `dog` are one class; a path and a header name lose their surrounding spaces too."""
    (tmp_path / "list.csv").write_text("path , label\n a.jpg ,dog\nb.jpg, dog\nc.jpg,dog \nd.jpg,cat\n")
    ds = load_dataset(tmp_path / "list.csv")
    assert ds.class_names == ["cat", "dog"]
    assert [(it.rel, it.path, it.label) for it in ds.items] == [
        (n, tmp_path / n, label) for n, label in [("a.jpg", 1), ("b.jpg", 1), ("c.jpg", 1), ("d.jpg", 0)]]


def test_load_dataset_argument_errors(tmp_path, dvc_folder):
    with pytest.raises(FeatbenchError, match="unknown dataset format 'coco'; choose one of "):
        load_dataset(dvc_folder, "coco")
    with pytest.raises(FeatbenchError, match="unknown --target 'colour'; choose breed or species"):
        load_dataset(dvc_folder, target="colour")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FeatbenchError, match="notes.txt: a file, but not a .csv list"):
        load_dataset(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatbenchError, match="empty: no images found for format dogs-vs-cats"):
        load_dataset(tmp_path / "empty", "dogs-vs-cats")
    with pytest.raises(FeatbenchError, match=r"nope: no such dataset folder; check --data or the \[dataset\] path"):
        load_dataset(tmp_path / "nope", "imagefolder")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    for fmt in "auto", "imagefolder":  # what is there, not "no such folder"
        with pytest.raises(FeatbenchError, match="fifo: a FIFO, not a dataset folder; check --data"):
            load_dataset(tmp_path / "fifo", fmt)
        with pytest.raises(FeatbenchError, match="gone: a broken symbolic link, not a dataset folder"):
            load_dataset(tmp_path / "gone", fmt)
    with pytest.raises(FeatbenchError, match="notes.txt: a file, not a dataset folder"):
        load_dataset(tmp_path / "notes.txt", "imagefolder")
    with pytest.raises(FeatbenchError, match=r"split fractions '0.5,0.5': give three non-negative"):
        assign_splits(_items(), (0.5, 0.5))
    for bad in [(0, 0, 0), (0.5, 0.5, 0.5), (float("nan"), 0.5, 0.5), (1e308, 0, 0)]:
        with pytest.raises(FeatbenchError, match="sum to 1"):
            assign_splits(_items(), bad)


def test_splits_exact_cuts_and_kept_splits():
    """Per class, ranks are cut at round(cumulative fraction × n); a listed split is kept as given."""
    from extract.datasets import Item
    items = _items((10,)) + [Item(None, "x/held.jpg", 0, "val"), Item(None, "x/u.jpg", NO_LABEL, "test")]
    codes = assign_splits(items, (0.5, 0.3, 0.2))
    assert np.bincount(codes[:10], minlength=3).tolist() == [5, 3, 2] and codes[10:].tolist() == [1, 2]
    assert np.bincount(assign_splits(_items((7,)), (1 / 3, 1 / 3, 1 / 3)), minlength=3).tolist() == [2, 3, 2]  # 2.33, 4.67


def test_split_assignment_is_pinned_across_versions():
    """A path's split is a contract: stores made by earlier versions must keep their splits, so the seeded
    hash behind the order is pinned (and the codes are int8, as stores hold them)."""
    codes = assign_splits(_items((10,)))
    assert codes.dtype == np.int8 and codes.tolist() == [0, 0, 0, 0, 2, 2, 0, 0, 0, 1]


def test_format_detection_thresholds(tmp_path):
    """90% of names decide the format, no fewer."""
    dvc, few = tmp_path / "dvc", tmp_path / "few"
    for i in range(9):
        write_image(dvc / f"cat.{i}.jpg", i)
        write_image(few / f"{i}.jpg", i)
    write_image(dvc / "9.jpg", 9)
    write_image(few / "cat.9.jpg", 9)
    assert detect_format(dvc) == "dogs-vs-cats"
    with pytest.raises(FeatbenchError, match=r"pass --format dogs-vs-cats\|oxford-pets\|imagefolder\|csv$"):
        detect_format(few)
    pets, odd = tmp_path / "pets", tmp_path / "odd"
    for i in range(9):
        write_image(pets / f"{'Bengal' if i % 2 else 'pug'}_{i}.jpg", i)
        write_image(odd / f"{i}.jpg", i)
    write_image(pets / "9.jpg", 9)
    write_image(odd / "Bengal_9.jpg", 9)
    write_image(odd / "pug_10.jpg", 10)
    assert detect_format(pets) == "oxford-pets"
    with pytest.raises(FeatbenchError, match="cannot tell the dataset format"):
        detect_format(odd)


def test_items_point_at_their_files_and_names_keep_dots(tmp_path, dvc_folder):
    write_image(dvc_folder / "test1" / "1.jpg", 1)
    pets = tmp_path / "(pets) v2.1"
    for i in range(4):
        write_image(pets / f"Bengal_{i}.jpg", i)
        write_image(pets / f"pug_{i}.jpg", 10 + i)
    write_image(pets / "images" / "stray.jpg", 0)  # images/ beside Breed_N files at the root: the root is listed
    folders = tmp_path / "folders"
    write_image(folders / "a" / "x.jpg", 0)
    for ds in (load_dataset(dvc_folder, ""), load_dataset(pets), load_dataset(folders)):
        assert all(it.path == ds.root / it.rel and it.path.is_file() for it in ds.items), ds.format
    assert load_dataset(pets).name == "pets-v2.1-breed" and len(load_dataset(pets).items) == 8
    assert load_dataset(dvc_folder, "").format == "dogs-vs-cats"  # "" means auto


def test_csv_format_given_a_folder_or_no_label_at_all_is_one_line(tmp_path, dvc_folder):
    """`--format csv` on a folder names it and what to pass; a CSV whose rows all lack a label has no class."""
    with pytest.raises(FeatbenchError) as err:
        load_dataset(dvc_folder, "csv")
    assert str(err.value) == (f"{dvc_folder}: a folder; --format csv needs --data FILE.csv, a CSV of "
                              "path,label[,split] (or drop --format csv for a folder)")
    with pytest.raises(FeatbenchError, match=r"list\.csv: no such file; --format csv needs"):
        load_dataset(tmp_path / "list.csv", "csv")
    for text in ("path,label\na.jpg,\nb.jpg,\n", "path,label,split\na.jpg,,\nb.jpg,,test\n"):
        (tmp_path / "list.csv").write_text(text)
        with pytest.raises(FeatbenchError) as err:
            load_dataset(tmp_path / "list.csv")
        assert str(err.value) == (f"{tmp_path / 'list.csv'}: no row has a label, so there is no class to learn; "
                                  "fill in the label column (unlabelled rows are test images beside labelled ones)")


def test_csv_labelled_rows_without_split_are_assigned_later(tmp_path):
    (tmp_path / "list.csv").write_text("path,label\na.jpg,x\nb.jpg,\n")
    ds = load_dataset(tmp_path / "list.csv")
    assert [(it.rel, it.split) for it in ds.items] == [("a.jpg", ""), ("b.jpg", "test")]
    (tmp_path / "twice.csv").write_text("path,label\na.jpg,x\na.jpg,y\n")
    with pytest.raises(FeatbenchError, match=r"twice.csv:3: a.jpg is listed twice \(first on line 2\); list each image once$"):
        load_dataset(tmp_path / "twice.csv")
    with pytest.raises(FeatbenchError, match="choose one of dogs-vs-cats, oxford-pets, imagefolder, csv$"):
        load_dataset(tmp_path / "list.csv", "tfrecord")


def test_imagefolder_follows_linked_folders_once_and_lists_what_it_cannot_walk(tmp_path, monkeypatch):
    """Linked sub-folders are walked, a folder reached twice (a second link, a loop) is listed once and the other
    way in is unlisted with the reason, as is an unreadable folder; a folder without images is no class."""
    outside = tmp_path / "outside"
    for i in range(2):
        write_image(tmp_path / "data" / "cats" / f"{i}.jpg", i)
        write_image(outside / f"{i}.jpg", 10 + i)
        write_image(tmp_path / "data" / "cats" / "locked" / f"{i}.jpg", 20 + i)
    root = tmp_path / "data"
    (root / "dogs").mkdir()
    (root / "dogs" / "sub").symlink_to(outside)
    (root / "wolves").symlink_to(outside)
    (root / "cats" / "up").symlink_to(root)
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("x")
    write_image(root / "stray.jpg", 30)
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # root reads a mode-000 folder, so refuse it here
    ds = load_dataset(root, "imagefolder")
    assert ds.class_names == ["cats", "dogs"]
    assert [(it.rel, it.label) for it in ds.items] == [("cats/0.jpg", 0), ("cats/1.jpg", 0),
                                                       ("dogs/sub/0.jpg", 1), ("dogs/sub/1.jpg", 1)]
    assert sorted(ds.unlisted) == [
        ("cats/locked", "unreadable folder (Permission denied)"),
        ("cats/up", "a symbolic link to a folder listed already (the dataset folder)"),
        ("empty", "a folder with no images, so no class"),
        ("notes", "a folder with no images, so no class"),
        ("notes/readme.txt", "in notes, a folder with no images, so no class"),
        ("stray.jpg", "not in a class folder (an imagefolder dataset has one folder per class)"),
        ("wolves", "a symbolic link to a folder listed already (dogs/sub)")]
    assert ds.describe()["classes"] == 2


def test_dogs_vs_cats_unread_sub_folders_are_listed_with_the_reason(tmp_path):
    """A Kaggle root's valid/ (or any other non-empty sub-folder, nested ones too) is not read, and not lost:
    it is unlisted with the reason; a flat folder's sub-folders alike; an empty or hidden one is nothing."""
    for i in range(3):
        write_image(tmp_path / "kaggle" / "train" / f"cat.{i}.jpg", i)
        write_image(tmp_path / "kaggle" / "train" / f"dog.{i}.jpg", 10 + i)
        write_image(tmp_path / "kaggle" / "test1" / f"{i + 1}.jpg", 20 + i)
        write_image(tmp_path / "kaggle" / "valid" / f"cat.{40 + i}.jpg", 30 + i)
    write_image(tmp_path / "kaggle" / "train" / "more" / "dog.9.jpg", 40)
    (tmp_path / "kaggle" / "empty").mkdir()
    write_image(tmp_path / "kaggle" / ".cache" / "cat.1.jpg", 41)
    ds = load_dataset(tmp_path / "kaggle")
    assert ds.format == "dogs-vs-cats" and len(ds.items) == 9
    unread = ("not read: a Dogs vs. Cats dataset's images are at its root, or in train/, test/ and test1/ when the "
              "root has none; list these in a CSV of path,label[,split] to use them")
    assert sorted(ds.unlisted) == [("train/more", unread), ("valid", unread)]
    write_image(tmp_path / "flat" / "cat.0.jpg", 0)
    write_image(tmp_path / "flat" / "train" / "dog.0.jpg", 1)
    assert load_dataset(tmp_path / "flat").unlisted == [("train", unread)]


NOT_UTF8 = "path is not valid UTF-8 (rename it)"


def latin1(root: Path, rel: bytes, seed: int) -> None:
    """An image at `root`/`rel`, named by bytes that are not UTF-8 (Latin-1, as a Windows archive writes them)."""
    path = os.fsencode(root) + b"/" + rel
    os.rename(write_image(Path(os.fsdecode(path + b".jpg")), seed), path)


def test_names_not_valid_utf8_are_unlisted_with_the_reason(tmp_path):
    """A store keeps UTF-8 text, so an entry whose path is not valid UTF-8 (café.jpg from a Latin-1 archive) is
    unlisted in every folder format with the reason, its name shown with the bytes escaped; an imagefolder's
    class folder so named is no class. (A CSV is UTF-8 text, so its paths always are.)"""
    for i in range(2):
        write_image(tmp_path / "dvc" / f"cat.{i}.jpg", i)
        write_image(tmp_path / "dvc" / f"dog.{i}.jpg", 10 + i)
        write_image(tmp_path / "pets" / f"Bengal_{i}.jpg", i)
        write_image(tmp_path / "pets" / f"pug_{i}.jpg", 10 + i)
        write_image(tmp_path / "folders" / "a" / f"{i}.jpg", i)
    latin1(tmp_path / "dvc", b"cat.7.jp\xe9g", 20)
    latin1(tmp_path / "pets", b"pug_7.jp\xe9g", 21)
    latin1(tmp_path / "folders", b"a/caf\xe9.jpg", 22)
    latin1(tmp_path / "folders", b"caf\xe9/0.jpg", 23)
    for fmt, name, unlisted in [("dogs-vs-cats", "dvc", ["cat.7.jp\\xe9g"]), ("oxford-pets", "pets", ["pug_7.jp\\xe9g"]),
                                ("imagefolder", "folders", ["a/caf\\xe9.jpg", "caf\\xe9"])]:
        ds = load_dataset(tmp_path / name)
        assert ds.format == fmt and len(ds.items) == 4 - 2 * (fmt == "imagefolder")
        assert sorted(ds.unlisted) == [(rel, NOT_UTF8) for rel in unlisted]
        assert all(c.isascii() for c in ds.class_names) and assign_splits(ds.items).shape == (len(ds.items),)
    assert load_dataset(tmp_path / "folders").class_names == ["a"]


def deny(monkeypatch, locked: Path) -> None:
    """`locked` acts as a mode-000 path does for a user other than root (tests may run as root, whom chmod does
    not stop): listing or opening it fails with EACCES, and so does the stat of anything inside it."""
    def refused(p):
        return PermissionError(13, "Permission denied", str(p))

    def at(p) -> Path | None:
        return Path(p) if isinstance(p, (str, os.PathLike)) else None

    def guard(real, inside: bool = False):
        def call(p=".", *a, **k):
            q = at(p)
            if q is not None and (locked in q.parents if inside else q == locked):
                raise refused(p)
            return real(p, *a, **k)
        return call
    for name in ("listdir", "scandir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(os, "stat", guard(os.stat, inside=True))
    monkeypatch.setattr("builtins.open", guard(open))


@pytest.mark.parametrize("fmt", ["dogs-vs-cats", "oxford-pets", "imagefolder", "csv", "auto"])
def test_unreadable_dataset_is_one_line_naming_it(tmp_path, monkeypatch, fmt):
    """A dataset folder (or CSV list) this user may not read is one line naming it and what to do, whatever the
    format, never a PermissionError's traceback."""
    names = {"dogs-vs-cats": ["cat.0.jpg", "dog.0.jpg"], "oxford-pets": ["Abyssinian_1.jpg", "beagle_1.jpg"],
             "imagefolder": ["cats/0.jpg", "dogs/0.jpg"], "auto": ["cat.0.jpg", "dog.0.jpg"]}
    root = tmp_path / "data"
    for i, name in enumerate(names.get(fmt, ["0.jpg"])):
        write_image(root / name, i)
    locked = root
    if fmt == "csv":
        locked = tmp_path / "list.csv"
        locked.write_text("path,label\ndata/0.jpg,a\n")
    deny(monkeypatch, locked)
    with pytest.raises(FeatbenchError) as err:
        load_dataset(locked, fmt)
    where = locked / "images" if fmt == "oxford-pets" else locked  # looked for first, as the folder's images
    assert str(err.value) == (f"{where}: cannot read it (Permission denied); make the dataset readable "
                              f"(chmod -R u+rX {locked}) or pass another --data")


@pytest.mark.parametrize("folder, name", [(".pics", "pics"), ("猫と犬", "dataset"), ("data.", "data")])
def test_a_name_made_from_the_folder_is_one_folder_name_classify_accepts(tmp_path, folder, name):
    """The name extract derives from the folder is one `check_dataset_name` accepts (a store named `.pics` or ``
    was written, then refused by classify, audit and merge): no leading dot, never empty."""
    from features.schema import check_dataset_name
    for label in ("cat", "dog"):
        write_image(tmp_path / folder / label / "a.jpg", 1)
    made = load_dataset(tmp_path / folder).name
    assert made == name and check_dataset_name(made, "test") == name
