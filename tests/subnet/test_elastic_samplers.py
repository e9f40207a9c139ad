"""ElasticViT samplers: the bucket walk's step law, buckets by hand, the sandwich min, the bank (insertion, softmax
draw, preference, rescoring), and use with NestedWidth's widths and a ViT supernet's depths."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from regimen.models import resnet
from regimen.models.vit import ViT
from regimen.subnet import count_macs
from regimen.subnet.elastic_samplers import (
    ComplexityAwareSampler,
    PerformanceAwareSampler,
    adjacent_bucket_step,
    cost_buckets,
)
from regimen.subnet.nested import NestedWidth
from regimen.subnet.ofa import OnceForAll


def test_adjacent_step_moves_by_at_most_one_and_stays_two_thirds_at_the_ends():
    g = torch.Generator().manual_seed(0)
    n = 3000
    for bucket, allowed, stay in ((0, {0, 1}, 2 / 3), (3, {2, 3}, 2 / 3), (1, {0, 1, 2}, 1 / 3)):
        counts = Counter(adjacent_bucket_step(bucket, 4, g) for _ in range(n))
        assert set(counts) == allowed
        assert abs(counts[bucket] / n - stay) < 0.04
    assert adjacent_bucket_step(0, 1, g) == 0
    with pytest.raises(ValueError, match="bucket"):
        adjacent_bucket_step(4, 4)


def test_cost_buckets_are_consecutive_equal_count_groups_by_hand():
    costs = [50, 10, 40, 20, 30, 60, 10]
    assert cost_buckets(costs, 3) == [[1, 6], [3, 4], [2, 0, 5]]
    assert cost_buckets(costs, 1) == [[1, 6, 3, 4, 2, 0, 5]]
    with pytest.raises(ValueError, match="buckets"):
        cost_buckets(costs, 8)
    with pytest.raises(ValueError, match="costs"):
        cost_buckets([], 1)


def test_complexity_sampler_draws_from_the_current_bucket_and_ends_with_its_cheapest():
    costs = [float(c) for c in range(12)]
    sampler = ComplexityAwareSampler(costs, buckets=4, generator=torch.Generator().manual_seed(0))
    previous = sampler.bucket
    for _ in range(200):
        picked = sampler.sample(3)
        assert abs(sampler.bucket - previous) <= 1
        previous = sampler.bucket
        assert all(sampler.bucket_of(i) == sampler.bucket for i in picked)
        assert picked[-1] == sampler.groups[sampler.bucket][0]  # the bucket's own min, not the global min


def test_consecutive_steps_span_less_cost_than_uniform_sampling():
    """The paper's point: adjacent buckets keep consecutive sub-networks close in cost."""
    costs = [float(2 ** (i / 3)) for i in range(24)]
    g = torch.Generator().manual_seed(0)
    sampler = ComplexityAwareSampler(costs, buckets=6, generator=g)
    walk = [sampler.sample(1)[0] for _ in range(500)]
    uniform = torch.randint(len(costs), (500,), generator=g).tolist()

    def mean_log_gap(seq):
        return sum(abs(math.log(costs[a]) - math.log(costs[b])) for a, b in zip(seq, seq[1:])) / (len(seq) - 1)

    assert mean_log_gap(walk) < 0.5 * mean_log_gap(uniform)


def test_bank_keeps_the_best_and_replaces_the_worst():
    sampler = PerformanceAwareSampler([1.0, 2.0, 3.0, 4.0], buckets=1, bank_size=2)
    sampler.update(0, -2.0)
    sampler.update(1, -1.0)
    sampler.update(2, -3.0)  # worse than both: not inserted
    assert sampler.banks[0] == {0: -2.0, 1: -1.0}
    sampler.update(3, -0.5)  # better: replaces the worst (0)
    assert sampler.banks[0] == {1: -1.0, 3: -0.5}
    sampler.update(1, -0.1)  # already in the bank: re-scored, not duplicated
    assert sampler.banks[0] == {1: -0.1, 3: -0.5}
    sampler.rescore(lambda i: -float(i))
    assert sampler.banks[0] == {1: -1.0, 3: -3.0}


def test_bank_draws_follow_the_softmax_of_the_scores():
    g = torch.Generator().manual_seed(0)
    sampler = PerformanceAwareSampler([1.0, 2.0, 3.0, 4.0], buckets=1, bank_size=3, bank_prob=1.0, generator=g)
    scores = {0: 0.0, 1: 1.0, 2: -1.0}
    for i, s in scores.items():
        sampler.update(i, s)
    n = 4000
    counts = Counter(sampler.sample(1)[0] for _ in range(n))
    z = sum(math.exp(s) for s in scores.values())
    for i, s in scores.items():
        assert abs(counts[i] / n - math.exp(s) / z) < 0.03
    assert counts[3] == 0 and sampler.from_bank


def test_preference_keeps_the_candidate_it_ranks_lowest():
    g = torch.Generator().manual_seed(0)
    sampler = PerformanceAwareSampler([1.0] * 8, buckets=1, bank_size=2, bank_prob=0.0, comparisons=5,
                                      preference=lambda c, anchor: -c, generator=g)
    sampler.update(0, -1.0)
    sampler.update(1, -1.0)  # more than half full: comparisons start
    for _ in range(50):
        state = g.get_state()
        picked = sampler.sample(1)[0]
        g.set_state(state)  # replay the draws by hand (one bucket: the walk draws nothing): the coin, 5 candidates
        torch.rand((), generator=g)
        candidates = [int(torch.randint(8, (1,), generator=g)) for _ in range(5)]
        assert picked == max(candidates)


def test_samplers_drive_nested_width_by_macs():
    """Usable by nested_width: the candidates are the widths, the costs the MACs of the extracted widths."""
    torch.manual_seed(0)
    example = torch.randn(1, 1, 16, 16)
    nested = NestedWidth(resnet(widths=(8, 16), depths=(1, 1)), example, (0.25, 0.5, 0.75, 1.0), sort_by="none")
    costs = [count_macs(nested.extract(w), example) for w in nested.widths]
    assert costs == sorted(costs)
    sampler = ComplexityAwareSampler(costs, buckets=2, generator=torch.Generator().manual_seed(0))
    widths = [nested.widths[i] for i in sampler.sample(2)]
    out = [nested(torch.randn(2, 1, 16, 16), width=w) for w in widths]
    assert all(o.shape == (2, 10) for o in out)


def test_samplers_drive_a_vit_supernet_by_depth():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    supernet = OnceForAll(ViT(image_size=(8, 8), patch=4, dim=16, depth=4, heads=2), x, depths=(1, 2, 3, 4))
    settings = supernet.uniform_settings()
    costs = [count_macs(supernet.build(s), x) for s in settings]
    assert costs == sorted(costs) and costs[-1] > 2 * costs[0]
    sampler = PerformanceAwareSampler(costs, buckets=2, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for i in sampler.sample(2):
            out = supernet(x, depth=settings[i].depth)
            sampler.update(i, -float(out.detach().logsumexp(-1).mean()))
    assert sum(len(b) for b in sampler.banks) >= 1
