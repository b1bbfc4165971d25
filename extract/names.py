"""Backbone names as stores know them: aliases and a store's file name, without importing torch (classify finds
stores by backbone name)."""
import re

ALIASES = {"ResNet152V2": "resnet152v2", "resnetv2_152": "resnet152v2"}


def canonical(name: str) -> str:
    """The registry name of backbone `name`: an alias's, keeping a store name's readout suffix (`Readout.suffix`:
    ResNet152V2-flip is resnet152v2-flip); other names as given."""
    for alias, real in ALIASES.items():
        if name == alias or name.startswith(alias + "-"):
            return real + name[len(alias):]
    return name


def store_stem(name: str) -> str:
    """How a store name starts for backbone `name`: its canonical name with characters other than letters,
    digits and `._-` as `_` (open_clip:ARCH/TAG, hf-hub:ORG/NAME, local-dir:FOLDER)."""
    return re.sub(r"[^\w.-]", "_", canonical(name))
