"""MFFMT: Multi-Feature Fusion Multi-Task network (Wei, Zhang, Xie, Curr. Oncol. 2024, section 2.2).

ResNet features F1..F4 (eq. 1) -> CLEP: enhanced maps, F_loc and the coarse lesion map P_mask
(eqs. 2-12) -> MFF over F4 and F_loc tokens (eqs. 13-26) -> classifier (eq. 27). Our addition: a
full-resolution lesion decoder over the CLEP-enhanced maps (see docs/DESIGN.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from MFFMTCore.base.choices import FUSION_CHOICES
from MFFMTCore.errors import MFFMTError
from MFFMTCore.network.backbone import backbone_channels, backbone_features, make_backbone
from MFFMTCore.network.classifier import TokenClassifier
from MFFMTCore.network.clep import CLEP
from MFFMTCore.network.decoder import LesionDecoder
from MFFMTCore.network.mff import MFF, ConcatFusion, SumFusion

# Stride of F4 relative to the input: H and W must be multiples of it.
OUTPUT_STRIDE = 32


class MFFMTOutput(NamedTuple):
    """What one forward pass of :class:`MFFMT` returns.

    Attributes:
        class_logits: (B, num_classes); softmax gives benign/malignant probabilities.
        mask_logits: (B, 1, H, W) lesion logits at the input size.
        coarse_mask_logits: (B, 1, H/32, W/32) logits of the paper's P_mask (eq. 11).
        aux_logits: name -> (B, n) logits of each auxiliary head; empty without auxiliary heads.
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    coarse_mask_logits: torch.Tensor
    aux_logits: dict[str, torch.Tensor]


class MFFMT(nn.Module):
    """The MFFMT network with the paper's ablation switches. Every argument is JSON-serialisable.

    Args:
        backbone: ``"resnet18"`` (MFFMT18) or ``"resnet50"`` (MFFMT50).
        in_channels: image channels (1 for B-mode ultrasound).
        num_classes: class logits (2: benign, malignant).
        fusion: ``"mff"`` (paper), or the "without MFF" ablations ``"sum"`` / ``"concat"`` of F4 and F_loc.
        use_ca: Coordinate Attention in CLEP.
        use_cbam: CBAM in CLEP.
        decoder: full-resolution lesion decoder; ``False`` upsamples P_mask instead (paper-faithful).
        cfefm_kv: K/V source of the two CFEFMs: ``"alternating"`` (F_loc then F4) or ``"loc"``.
        num_heads: attention heads in MFF.
        mlp_ratio: MLP width ratio in MFF.
        aux_classes: auxiliary heads on the fused feature, name -> number of classes (e.g. ``{"birads": 4}``).
        embed_dim: MFF token width; ResNet50's 2048 channels are projected to it (docs/DESIGN.md, "MFF").
        decoder_channels: width of the decoder's top-down path (48 keeps it under 2% of ResNet18's cost).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 1,
        num_classes: int = 2,
        fusion: str = "mff",
        use_ca: bool = True,
        use_cbam: bool = True,
        decoder: bool = True,
        cfefm_kv: str = "alternating",
        num_heads: int = 4,
        mlp_ratio: float = 3.0,
        aux_classes: dict[str, int] | None = None,
        embed_dim: int = 512,
        decoder_channels: int = 48,
    ) -> None:
        super().__init__()
        if fusion not in FUSION_CHOICES:
            raise MFFMTError("fusion", f"must be one of {FUSION_CHOICES}, got {fusion!r}")
        aux_classes = dict(aux_classes or {})
        for name, count in aux_classes.items():
            if not isinstance(count, int) or count < 1:
                raise MFFMTError("aux_classes", f"auxiliary head {name!r} needs a positive number of classes, got {count!r}")
        self.architecture: dict[str, Any] = {
            "backbone": backbone, "in_channels": in_channels, "num_classes": num_classes, "fusion": fusion,
            "use_ca": use_ca, "use_cbam": use_cbam, "decoder": decoder, "cfefm_kv": cfefm_kv,
            "num_heads": num_heads, "mlp_ratio": mlp_ratio, "aux_classes": aux_classes,
            "embed_dim": embed_dim, "decoder_channels": decoder_channels,
        }
        channels = backbone_channels(backbone)
        self.backbone = make_backbone(backbone, in_channels)
        self.gradcam_layer = "backbone.layer4"
        self.clep = CLEP(channels, use_ca=use_ca, use_cbam=use_cbam)
        if fusion == "mff":
            self.fusion: nn.Module = MFF(channels[-1], embed_dim, num_heads, mlp_ratio, cfefm_kv)
        elif fusion == "sum":
            self.fusion = SumFusion(channels[-1])
        else:
            self.fusion = ConcatFusion(channels[-1])
        features = self.fusion.out_features
        self.classifier = TokenClassifier(features, num_classes)
        self.aux_heads = nn.ModuleDict({name: TokenClassifier(features, count) for name, count in aux_classes.items()})
        self.lesion_decoder = LesionDecoder(channels, decoder_channels) if decoder else None

    def forward(self, x: torch.Tensor) -> MFFMTOutput:
        """
        Args:
            x: images (B, in_channels, H, W), intensities in [0, 1], H and W multiples of 32.
        """
        if not torch.jit.is_tracing() and (x.shape[-2] % OUTPUT_STRIDE or x.shape[-1] % OUTPUT_STRIDE):
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of {OUTPUT_STRIDE}")
        features = backbone_features(self.backbone, x)
        enhanced, f_loc, coarse = self.clep(features)
        tokens = self.fusion(features[-1], f_loc)
        class_logits = self.classifier(tokens)
        aux_logits = {name: head(tokens) for name, head in self.aux_heads.items()}
        if self.lesion_decoder is not None:
            mask_logits = self.lesion_decoder(enhanced)
        else:
            mask_logits = F.interpolate(coarse, scale_factor=float(OUTPUT_STRIDE), mode="bilinear", align_corners=False)
        return MFFMTOutput(class_logits, mask_logits, coarse, aux_logits)
