"""The MFFMT network (Wei, Zhang, Xie, Curr. Oncol. 2024) and its building blocks, one per module."""

from MFFMTCore.network.attention import FactorisedCrossAttention
from MFFMTCore.network.backbone import (
    backbone_channels,
    backbone_features,
    load_torchvision_weights,
    make_backbone,
)
from MFFMTCore.network.cbam import CBAM, ChannelAttention, SpatialAttention
from MFFMTCore.network.cfefm import CFEFM
from MFFMTCore.network.classifier import TokenClassifier
from MFFMTCore.network.clep import CLEP
from MFFMTCore.network.coordinate_attention import CoordinateAttention
from MFFMTCore.network.decoder import LesionDecoder
from MFFMTCore.network.dffm import DFFM
from MFFMTCore.network.fusion_block import CrossFusionBlock
from MFFMTCore.network.mff import MFF, ConcatFusion, SumFusion
from MFFMTCore.network.mffmt import MFFMT, MFFMTOutput
from MFFMTCore.network.mlp import ResidualMLP
from MFFMTCore.network.patch_embedding import PatchEmbedding

__all__ = [
    "CBAM", "CFEFM", "CLEP", "DFFM", "MFF", "MFFMT",
    "ChannelAttention", "ConcatFusion", "CrossFusionBlock", "CoordinateAttention", "FactorisedCrossAttention", "LesionDecoder",
    "MFFMTOutput", "PatchEmbedding", "ResidualMLP", "SpatialAttention", "SumFusion", "TokenClassifier",
    "backbone_channels", "backbone_features", "load_torchvision_weights", "make_backbone",
]
