"""Small reference models built as explicit stages (``model.stages``: an ordered ModuleList ending in the head)."""

from regimen.models.copying import copy_module
from regimen.models.embedding import load_embedding_model
from regimen.models.factory import build_model
from regimen.models.field import CoordinateMLP, FourierFeatures
from regimen.models.gcn import GCN, GraphConv, check_edge_index, gcn_norm, gcn_propagate, row_normalize
from regimen.models.gpt import GPT, LMHead, TokenEmbedding
from regimen.models.mlp import MLP
from regimen.models.resnet import BasicBlock, ResNet, resnet
from regimen.models.sequence import RecurrentEncoder, SequenceRNN, StepEmbedding
from regimen.models.speednet import PatchWhitening2d, SpeedNet, image_patches, patch_whitening
from regimen.models.staged import ClassifierHead, StagedModel
from regimen.models.transformer import CausalSelfAttention, FeedForward, MoEFeedForward, TransformerBlock
from regimen.models.vit import PatchEmbedding, ViT, ViTHead

__all__ = ["BasicBlock", "CausalSelfAttention", "ClassifierHead", "CoordinateMLP", "FeedForward", "FourierFeatures",
           "GCN", "GPT", "GraphConv", "LMHead", "MLP", "MoEFeedForward", "PatchEmbedding", "PatchWhitening2d",
           "RecurrentEncoder", "ResNet", "SequenceRNN", "SpeedNet", "StagedModel", "StepEmbedding", "TokenEmbedding",
           "TransformerBlock", "ViT", "ViTHead", "build_model", "check_edge_index", "copy_module", "gcn_norm",
           "gcn_propagate", "image_patches", "load_embedding_model", "patch_whitening", "resnet", "row_normalize"]
