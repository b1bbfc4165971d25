"""Published results from the literature: shown beside measured ones, never mixed with them.

Every entry names its source and the split it was measured on, which is never featbench's split:
these rows say where the field stands, not what featbench would score on the same images.
"""
from dataclasses import asdict, dataclass

NOTEBOOKS = "https://github.com/wtfleming/jupyter-notebooks-public/blob/master/dogs-vs-cats"
FLEMING_2 = f"W. Fleming, \"Cats vs Dogs - Part 2\" (2019), {NOTEBOOKS}/dogs-vs-cats-part-2.ipynb"
FLEMING_3 = f"W. Fleming, \"Cats vs Dogs - Part 3\" (2020), {NOTEBOOKS}/dogs-vs-cats-part-3.ipynb"
HELD_OUT_4500 = "Kaggle Dogs vs. Cats train: 16,000 train / 4,500 val / 4,500 held-out test"
SEED = "featbench's seed notebooks (cited in issue #4)"
PETS_TEST = "Oxford-IIIT Pets official test split (3,669 images, 37 breeds)"
FASTAI = "fast.ai course v3 (2019), lesson 1, lesson1-pets.ipynb"
FASTAI_SPLIT = "random 20% validation split of the 7,390 Oxford-IIIT Pets images (fastai default)"
CLIP = "Radford et al., \"Learning Transferable Visual Models From Natural Language Supervision\" (2021), Table 10"


TASK_CLASSES = {"dogs-vs-cats": 2, "oxford-pets-breed": 37}  # the classes the published numbers are over


@dataclass(frozen=True)
class Published:
    """One number from the literature: what was done, how well, where it was measured, who says so."""
    task: str  # "dogs-vs-cats" | "oxford-pets-breed"
    backbone: str
    method: str  # "fine-tuned" | "frozen features" | "competition" | "hand-crafted"
    accuracy: float | None
    split: str
    source: str
    log_loss: float | None = None

    def as_row(self) -> dict:
        return {"kind": "published", **asdict(self)}


PUBLISHED = [
    Published("dogs-vs-cats", "VGG16", "fine-tuned", 0.986, HELD_OUT_4500,
              f"{FLEMING_2} (block5 + dense head fine-tuned, 30 epochs)"),
    Published("dogs-vs-cats", "VGG16", "frozen features", 0.983, HELD_OUT_4500,
              f"{FLEMING_2} (frozen conv base + dense head)"),
    Published("dogs-vs-cats", "ResNet18", "fine-tuned", 0.9902, HELD_OUT_4500,
              f"{FLEMING_3} (BatchNorm + new head trained, 2 epochs)"),
    Published("dogs-vs-cats", "ResNet34", "fine-tuned", 0.9889, HELD_OUT_4500,
              f"{FLEMING_3} (BatchNorm + new head trained, 2 epochs)"),
    Published("dogs-vs-cats", "ResNet18+ResNet34", "fine-tuned", 0.9909, HELD_OUT_4500,
              f"{FLEMING_3} (mean of the two models' outputs)"),
    Published("dogs-vs-cats", "ResNet152V2", "fine-tuned", 0.988, "the seed's own validation split", SEED),
    Published("dogs-vs-cats", "ResNet152V2", "fine-tuned", None,
              "Kaggle Dogs vs. Cats Redux test set (12,500 images), log-loss of P(dog)", SEED, log_loss=0.05538),
    Published("dogs-vs-cats", "OverFeat (P. Sermanet)", "competition", 0.989,
              "Kaggle Dogs vs. Cats (2014) test set, winning entry",
              "Kaggle Dogs vs. Cats leaderboard (2014), https://www.kaggle.com/c/dogs-vs-cats/leaderboard"),
    Published("oxford-pets-breed", "shape + appearance (DPM + bag of words)", "hand-crafted", 0.5921, PETS_TEST,
              "Parkhi, Vedaldi, Zisserman, Jawahar, \"Cats and Dogs\", CVPR 2012 (mean per-class accuracy)"),
    Published("oxford-pets-breed", "ResNet34", "fine-tuned", 0.934, FASTAI_SPLIT, FASTAI),
    Published("oxford-pets-breed", "ResNet50", "fine-tuned", 0.952, FASTAI_SPLIT, FASTAI),
    Published("oxford-pets-breed", "ResNet-50 (ImageNet supervised)", "frozen features", 0.915, PETS_TEST,
              f"{CLIP}, logistic regression on frozen features"),
    Published("oxford-pets-breed", "CLIP ViT-L/14", "frozen features", 0.951, PETS_TEST,
              f"{CLIP}, logistic regression on frozen features"),
    Published("oxford-pets-breed", "DINOv2 ViT-g/14", "frozen features", 0.967, PETS_TEST,
              "Oquab et al., \"DINOv2: Learning Robust Visual Features without Supervision\" (2023), "
              "linear evaluation on frozen features"),
]


def task_of(dataset_meta: dict) -> str:
    """The published task a store's dataset matches: dogs-vs-cats, oxford-pets-breed, or ""."""
    fmt, target = dataset_meta.get("format", ""), dataset_meta.get("target", "")
    if fmt == "dogs-vs-cats":
        return "dogs-vs-cats"
    if fmt == "oxford-pets":
        return f"oxford-pets-{target or 'breed'}"
    return ""


def published_for(task: str) -> list[Published]:
    return [p for p in PUBLISHED if p.task == task]
