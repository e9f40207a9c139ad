"""Small reference models built as explicit stages (``model.stages``: an ordered ModuleList ending in the head)."""

from regimen.models.copying import copy_module
from regimen.models.embedding import load_embedding_model
from regimen.models.factory import build_model
from regimen.models.gpt import GPT, LMHead, TokenEmbedding
from regimen.models.mlp import MLP
from regimen.models.resnet import BasicBlock, ResNet, resnet
from regimen.models.speednet import PatchWhitening2d, SpeedNet, image_patches, patch_whitening
from regimen.models.staged import ClassifierHead, StagedModel
from regimen.models.transformer import CausalSelfAttention, FeedForward, MoEFeedForward, TransformerBlock
from regimen.models.vit import PatchEmbedding, ViT, ViTHead

__all__ = ["BasicBlock", "CausalSelfAttention", "ClassifierHead", "FeedForward", "GPT", "LMHead", "MLP",
           "MoEFeedForward", "PatchEmbedding", "PatchWhitening2d", "ResNet", "SpeedNet", "StagedModel",
           "TokenEmbedding", "TransformerBlock", "ViT", "ViTHead", "build_model", "copy_module", "image_patches",
           "load_embedding_model", "patch_whitening", "resnet"]
