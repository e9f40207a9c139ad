"""Torch-Pruning on the Hugging Face models of the tracer zoo *with* the hints its HF examples use: ``num_heads`` for
every q/k/v projection, ``prune_num_heads=True``, and the attention modules' head counts reset by hand afterwards.
Same pruning as benchmarks/subnet_tracer.py (GroupMagnitudeImportance(p=2), 30 % of channels, classifier ignored),
plus half of the heads.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/subnet_tracer_tp_hints.py hf_bert hf_vit
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regimen.subnet._common import normalize_inputs  # noqa: E402
from tests.subnet.archs import randomize_norms  # noqa: E402
from tests.subnet.archs_real import REAL_ARCHS, output  # noqa: E402

PROJECTIONS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


def main() -> int:
    import torch_pruning as tp

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    for name in sys.argv[1:] or ["hf_bert", "hf_vit"]:
        torch.manual_seed(0)
        model, x = REAL_ARCHS[name]()
        randomize_norms(model)
        model.eval()
        args, kwargs = normalize_inputs(x)
        with torch.no_grad():
            shape = output(model(*args, **kwargs)).shape
        num_heads = {}
        owners = []
        for module in model.modules():
            for names in PROJECTIONS:
                if all(isinstance(getattr(module, n, None), nn.Linear) for n in names):
                    heads = getattr(module, "num_attention_heads", None) or module.config.num_attention_heads
                    num_heads.update({getattr(module, n): heads for n in names})
                    owners.append((module, getattr(module, names[0])))
        params = sum(p.numel() for p in model.parameters())
        try:
            pruner = tp.pruner.MetaPruner(
                model, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.3,
                global_pruning=False, ignored_layers=[model.classifier], num_heads=num_heads, prune_num_heads=True,
                prune_head_dims=False, head_pruning_ratio=0.5)
            pruner.step()
            for module, query in owners:  # as in Torch-Pruning's HF examples
                if hasattr(module, "num_attention_heads"):
                    module.num_attention_heads = pruner.num_heads[query]
                if hasattr(module, "all_head_size"):
                    module.all_head_size = query.out_features
            with torch.no_grad():
                same = output(model(*args, **kwargs)).shape == shape
            print(name, "runs" if same else "output shape changed", f"params {params} ->",
                  sum(p.numel() for p in model.parameters()), "query widths",
                  [query.out_features for _, query in owners])
        except Exception as error:  # noqa: BLE001
            print(name, "error", type(error).__name__, str(error)[:200])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
