"""Backbones worth trying first for frozen features, each with a published number and where it was published.

Only numbers read in their source: `metric` says what each one measures (a linear probe trained on ImageNet-1k
features, or zero-shot accuracy on Oxford-IIIT Pet, which trains nothing), so compare rows of one metric only.
`python -m extract list-backbones` and README's backbone section show this table.
"""
from dataclasses import dataclass

SOURCES = {
    "dinov2": "DINOv2 (Oquab et al. 2023): github.com/facebookresearch/dinov2 README.md, 'Pretrained models' (its "
              "linear heads read the class token and the mean patch token)",
    "eva": "EVA (Fang et al. 2022): github.com/baaivision/EVA EVA-01/clip/README.md, EVA-CLIP vision encoder, 224 px",
    "open_clip": "OpenCLIP: github.com/mlfoundations/open_clip docs/openclip_results.csv (zero-shot, 38 datasets)",
}


@dataclass(frozen=True)
class Recommended:
    name: str  # as --backbone takes it
    metric: str
    accuracy: float  # percent, as the source reports it
    source: str  # a key of SOURCES


IN1K_LINEAR = "ImageNet-1k linear probe"
PETS_ZERO_SHOT = "Oxford-IIIT Pet zero-shot"

RECOMMENDED = (
    Recommended("vit_small_patch14_dinov2.lvd142m", IN1K_LINEAR, 81.1, "dinov2"),
    Recommended("vit_base_patch14_dinov2.lvd142m", IN1K_LINEAR, 84.5, "dinov2"),
    Recommended("vit_large_patch14_dinov2.lvd142m", IN1K_LINEAR, 86.3, "dinov2"),
    Recommended("open_clip:EVA01-g-14/laion400m_s11b_b41k", IN1K_LINEAR, 86.5, "eva"),
    Recommended("open_clip:ViT-B-32/laion2b_s34b_b79k", PETS_ZERO_SHOT, 90.8, "open_clip"),
    Recommended("open_clip:convnext_base_w/laion2b_s13b_b82k_augreg", PETS_ZERO_SHOT, 91.9, "open_clip"),
    Recommended("open_clip:ViT-L-14/openai", PETS_ZERO_SHOT, 93.2, "open_clip"),
    Recommended("open_clip:ViT-L-14/datacomp_xl_s13b_b90k", PETS_ZERO_SHOT, 95.1, "open_clip"),
    Recommended("open_clip:ViT-SO400M-14-SigLIP-384/webli", PETS_ZERO_SHOT, 96.8, "open_clip"),
)
