"""Dependency groups of coupled channels (DepGraph-style), found by tracing a model once.

Removing output channel ``c`` of a conv forces removing the matching BatchNorm entries, the matching input columns
of every consumer, and — through residual additions — the matching channels of every tensor added to it. A *group*
collects every parameter slice that must be removed together. This package finds the groups; ``prune.py`` removes
them. Reference: Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023, arXiv 2301.12900.

How it works. The model is run once on ``example_inputs`` (eval mode, no grad, state restored afterwards) under a
recorder: ``torch.fx`` symbolic tracing plus an interpreter when the model is traceable, otherwise an *eager*
recorder (a ``TorchFunctionMode`` plus hooks on leaf modules, which follows data-dependent control flow and sees the
same ops; it replaces the autograd-graph walk of DepGraph because it also sees non-differentiable ops). Next to every
tensor we propagate an integer *label tensor* of the same shape: the label at a position is the channel element that
position belongs to (-1: none). Layers create fresh elements for their outputs; shape ops (view, flatten, permute,
cat, getitem, pad, ...) are applied to the label tensors themselves, so concatenation offsets and flatten expansion
(channel ``c`` -> columns ``c*HW ... (c+1)*HW-1``) fall out without special cases; element-wise ops union the
elements they combine (residual adds). Elements are merged with union-find. A *unit* is one merged element (a channel,
or a whole attention head); units that touch the same set of parameter slices form one ``Group``.

Supported leaves: ``Conv1d/2d/3d`` (dense, grouped: same in-group position in every group; depthwise: in/out/groups
pruned together), ``ConvTranspose*`` (groups=1), ``Linear``, ``BatchNorm*``, ``InstanceNorm*``, ``LayerNorm``
(structurally; not lossless), ``Embedding``, ``PReLU``, ``nn.MultiheadAttention`` (packed ``in_proj``, self- and
cross-attention: whole heads form their own group; embedding dims couple to the residual stream), pooling,
upsampling, ``PixelShuffle``/``PixelUnshuffle``, ``ChannelShuffle``, activations, dropout, flatten/unflatten; model
parameters used directly (class tokens, position embeddings, layer-scale vectors, RMSNorm weights).
``nn.TransformerEncoderLayer``/``TransformerDecoderLayer`` (and their stacks, ``nn.Transformer``) are traced inside:
the tracer runs their unfused path, and a pruned layer stays off the fused eval fast path (its attention becomes a
``PrunedMultiheadAttention``). ``GroupNorm`` channels and model outputs are never pruned.

Functions and patterns beyond modules:

* ``F.scaled_dot_product_attention(q, k, v)`` on ``(..., heads, length, head_dim)``: every channel of query head
  ``h`` and of its key/value head (``h // (H / H_kv)``: grouped-query attention, with ``enable_gqa`` or a
  ``repeat_kv`` expand) is one head unit, so whole heads (whole key/value groups with GQA) are pruned. The module
  that calls it is recorded (``Group.attention``) and its head-count attributes (``num_heads``,
  ``num_attention_heads``, ``num_key_value_heads``, ``all_head_size``, ``split_size``...) follow the pruning.
  Hand-written ``q @ k.transpose(-2, -1)`` / ``p @ v`` couple everything one batch entry (one head) combines.
* ``F.linear``, ``F.conv1d/2d/3d``, ``torch.addmm`` (Hugging Face ``Conv1D``) and ``x @ W`` whose weight is a
  parameter of the model: pruned like the module (a depthwise functional conv, whose ``groups`` is written in the
  code, is left alone).
* ``chunk``/``split``/``unbind``/``tensor_split`` of channels (GLU/SwiGLU halves, ShuffleNet v2, GhostNet): pieces of
  equal size lose the same positions (unit ``j`` = position ``j`` of every piece); pieces whose sizes are written in
  the code (``split([2, 4])``) are not pruned (noted in ``skipped``). ``F.glu`` couples its halves.
* Views that cut a channel dim into a grid (``view(b, g, c // g, h, w)`` of a channel shuffle, ``(heads,
  head_dim)``): after tracing, every unit must be a union of whole slices of the grid (whole heads, or the same
  channel of every group); otherwise channel ``j`` of every slice is merged into one unit (noted in ``skipped``).
* Indexing that keeps fixed positions of a dim holding several units (``x[:, :3]`` of channels) leaves those
  channels alone; ``torch.roll`` of channels raises ``UntraceableError``.
* Exactness: a tensor that is not zero for zeroed units (``1 + tanh(x)``, ``sigmoid(x)``) makes them inexact only if
  it is not multiplied back by a zero-preserving tensor (GPT-2's ``gelu_new``, squeeze-excitation gates stay exact).

Any other op that touches channel data raises ``UntraceableError`` naming it, before any surgery.

The ``Group`` data structure (stable API, used by ``prune.py``, ``hesso.py`` and ``nested.py``):

* ``group.size`` — number of units ``U`` (channels, or heads for ``kind == "head"``).
* ``group.slices`` — list of ``Slice(module, param, dim, indices, role, is_buffer)``:
  ``model.get_submodule(module)`` owns tensor ``param`` (a parameter or buffer name such as ``"weight"``,
  ``"bias"``, ``"running_mean"``, ``"in_proj_weight"``); ``indices`` is a ``LongTensor (U, k)``: unit ``i`` occupies
  positions ``indices[i]`` (sorted) along dimension ``dim`` of that tensor. Examples:
  conv/linear producing the channels: ``dim=0``, ``k=1``; BatchNorm ``weight/bias/running_*``: ``dim=0, k=1``;
  consumer conv ``weight``: ``dim=1`` (after a concat, the indices carry the offset of the concatenated part);
  Linear after flatten: ``dim=1, k=H*W`` (``indices[c] = c*HW + arange(HW)`` plus any concat offset);
  grouped conv inputs: the unit spans the same in-group position of all ``G`` groups (``k`` values on the producer);
  attention heads: ``in_proj_weight``/``in_proj_bias`` ``dim=0`` with ``k = 3*head_dim`` (q, k and v rows),
  ``out_proj.weight`` ``dim=1`` with ``k = head_dim``.
  ``role`` is ``"out"`` for tensors that *produce* the unit's values (filter rows, biases, norm affine params and
  buffers, q/k/v rows, position embeddings) and ``"in"`` for tensors that *consume* them (columns of the next layer).
  Zeroing the ``"out"`` parameter slices of a unit (see ``zero_units``) makes the unit's output exactly zero when the
  group is ``lossless``; removing such a unit then leaves the function unchanged.
* ``group.lossless`` — False when some op normalises or mixes across these channels (LayerNorm over them, softmax over
  them, a non-zero-preserving activation such as sigmoid, adding an unlabeled tensor): removal then changes outputs
  even for zeroed units.
* ``group.kind`` — ``"channel"`` or ``"head"``; ``group.name`` — the first module producing the units (for reports
  and ``ignore``); ``group.modules`` — every module touched; ``group.attention`` — ``AttentionSite``s: modules
  calling ``scaled_dot_product_attention`` on these heads and which unit each query / key-value head is.
* ``group.positions(slice_, units)`` — sorted positions along ``slice_.dim`` of the given units (what to keep or drop).

To keep the first ``k`` units of a group (nested widths), call ``prune.prune_groups(model, {group: keep_units})``,
which slices every ``Slice``, fixes module attributes (``out_channels``, ``groups``, ``num_features``...), replaces
packed attention by ``PrunedMultiheadAttention`` when heads or dims change, and rebinds an optimizer.

Layout of the package (after Torch-Pruning's split of its dependency module):

* ``group.py`` — the data structures above; ``union_find.py`` — merging elements;
* ``ops.py`` — which ops and modules keep, mix, reshape or ignore channels; which modules are leaves;
* ``propagate.py`` — label propagation op by op (the index mapping); ``grouping.py`` — labels to groups;
* ``recorders.py`` — the fx and eager recorders; ``graph.py`` — ``trace_dependencies`` and friends.
"""

from regimen.subnet._common import normalize_inputs
from regimen.subnet.dependency.graph import dependency_groups, scale_units, trace_dependencies, zero_units
from regimen.subnet.dependency.group import AttentionSite, DependencyGraph, Group, Slice, UntraceableError

__all__ = [
    "AttentionSite",
    "DependencyGraph",
    "Group",
    "Slice",
    "UntraceableError",
    "dependency_groups",
    "normalize_inputs",
    "scale_units",
    "trace_dependencies",
    "zero_units",
]
