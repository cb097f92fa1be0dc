"""Teacher Re-ID network ("strong baseline"): ResNet trunk -> global average pooling ->
optional linear projection to ``embedding_dim`` -> BN-neck -> bias-free identity classifier.

Inputs are person crops (B, 3, crop_h, crop_w) float in [0, 1]; the network normalises them
with the ImageNet mean/std itself, so training crops and inference crops
(:func:`pipeline.data.crops.crop_and_resize`) go through exactly the same path.
Training uses the pre-BN feature for the triplet loss and the classifier on the BN output
for the ID loss; inference embeddings are the BN output, L2-normalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.backbone import _pretrained_state

WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


class TeacherReid(nn.Module):
    def __init__(self, *, backbone: str = "resnet50", num_classes: int, embedding_dim: int = 256,
                 crop_height: int = 256, crop_width: int = 128, pretrained: bool = False):
        super().__init__()
        if backbone not in WIDTHS:
            raise ValueError(f"reid backbone {backbone!r}: expected one of {sorted(WIDTHS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.model_args = dict(backbone=backbone, num_classes=num_classes,
                               embedding_dim=embedding_dim,
                               crop_height=crop_height, crop_width=crop_width, pretrained=False)
        resnet = getattr(torchvision.models, backbone)(weights=None)
        if pretrained:
            resnet.load_state_dict(_pretrained_state(backbone, None))
        self.trunk = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                                   resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        width = WIDTHS[backbone]
        self.projection = nn.Linear(width, embedding_dim) if embedding_dim != width else \
            nn.Identity()
        self.neck = nn.BatchNorm1d(embedding_dim)
        self.neck.bias.requires_grad_(False)  # BN-neck: no shift before the classifier
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.crop_size = (crop_height, crop_width)
        self.embedding_dim = embedding_dim

    def features(self, crops: Tensor) -> Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, embedding_dim) pre-BN feature."""
        x = self.trunk((crops - self.mean) / self.std)
        return self.projection(x.mean(dim=(2, 3)))

    def forward(self, crops: Tensor) -> dict[str, Tensor]:
        """Training outputs: {"features" (B, D) pre-BN, "logits" (B, num_classes)}."""
        feats = self.features(crops)
        return {"features": feats, "logits": self.classifier(self.neck(feats))}

    def embed(self, crops: Tensor) -> Tensor:
        """Inference embeddings (B, D): BN-neck output, L2-normalised (call in eval mode)."""
        if len(crops) == 0:
            return crops.new_zeros((0, self.embedding_dim))
        return F.normalize(self.neck(self.features(crops)).float(), dim=1)


def build_teacher_reid(cfg, num_classes: int) -> TeacherReid:
    """``cfg``: :class:`pipeline.config.teacher.ReidConfig`."""
    return TeacherReid(backbone=cfg.backbone, num_classes=num_classes,
                       embedding_dim=cfg.embedding_dim,
                       crop_height=cfg.crop_height, crop_width=cfg.crop_width,
                       pretrained=cfg.pretrained)


# ------------------------------------------------------------------------------ losses

def id_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.1) -> Tensor:
    """Label-smoothed cross-entropy; logits (B, C), labels (B,) in 0..C-1."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def batch_hard_triplet_loss(features: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss (Hermans et al.) on Euclidean distances.

    features (B, D), labels (B,). Per anchor: hardest positive (farthest, same label, not
    itself) and hardest negative (closest, other label); mean of relu(d_ap - d_an + margin)
    over anchors that have both. Zero (with a gradient path) when no anchor has both."""
    feats = features.float()
    dist = torch.cdist(feats, feats).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return feats.sum() * 0.0
    d_ap = torch.where(pos, dist, torch.zeros_like(dist)).max(1).values
    d_an = torch.where(neg, dist, torch.full_like(dist, float("inf"))).min(1).values
    return F.relu(d_ap - d_an + margin)[valid].mean()
