"""Matching, relation and siamese networks (and protonet, sharing their episode code) against direct re-computation.

Each reference embeds a tiny episode with `functional_call` on the conv4 features and writes the
paper's formula out with loops (cosine attention, relation scores, L1 verification logits, prototype
distances), in float64; gradients come from `torch.autograd.grad` on that reference loss.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metaserve.algorithms import Matching, ProtoNet, Relation, Siamese
from metaserve.api import as_config
from metaserve.models.conv4 import Conv4
from metaserve.models.metric_heads import MatchingConv4, RelationConv4, SiameseConv4
from metaserve.runtime.loop import train_loop
from metaserve.tasks.base import Task

from conftest import OMNIGLOT, ROOT

DT = torch.float64
WAYS, SHOTS, QUERY, SIZE = 3, 2, 2, 16


def episode(seed=0) -> Task:
    gen = torch.Generator().manual_seed(seed)
    sx = torch.randn(WAYS * SHOTS, 1, SIZE, SIZE, generator=gen, dtype=DT)
    qx = torch.randn(WAYS * QUERY, 1, SIZE, SIZE, generator=gen, dtype=DT)
    return Task(sx, torch.arange(WAYS).repeat_interleave(SHOTS), qx, torch.arange(WAYS).repeat(QUERY))


def model_and_params(cls, seed=0):
    torch.manual_seed(seed)
    model = (cls(1, 0, 8, SIZE) if cls is Conv4 else cls(1, 8, SIZE)).to(DT)
    return model, {k: v.detach().clone() for k, v in model.named_parameters()}


def embed(model, params, x):
    """Conv4 features with the given parameters (functional_call on `features`), flattened."""
    feats = {k.removeprefix("features."): v for k, v in params.items() if k.startswith("features.")}
    return torch.flatten(functional_call(model.features, feats, (x,)), start_dim=1)


def leaves(params):
    return {k: v.clone().requires_grad_(True) for k, v in params.items()}


def autograd(loss, params):
    return dict(
        zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True))
    )


def check(algo, params, task, reference):
    """predict(adapt(support), query) equals the reference scores; the contribution its loss gradient."""
    p = leaves(params)
    scores, loss = reference(p, task)
    want = autograd(loss, p)
    got = algo.task_update(params, task)
    torch.testing.assert_close(
        algo.predict(algo.adapt(params, task.support_x, task.support_y), task.query_x),
        scores.detach(),
        rtol=1e-10,
        atol=1e-12,
    )
    for k in params:
        torch.testing.assert_close(got.contribution[k], want[k], rtol=1e-8, atol=1e-11, msg=lambda m, k=k: f"{k}: {m}")
    assert got.metrics["loss"] == pytest.approx(float(loss.detach()), rel=1e-10)
    assert got.metrics["acc"] == pytest.approx(float((scores.argmax(1) == task.query_y).to(DT).mean()), rel=1e-12)
    return got


# --- direct re-computation of each formula -------------------------------------------------------
def test_protonet_scores_are_negative_squared_distances_to_prototypes():
    model, theta = model_and_params(Conv4)
    task = episode(1)

    def reference(p, t):
        es, eq = embed(model, p, t.support_x), embed(model, p, t.query_x)
        protos = [es[t.support_y == c].mean(0) for c in range(WAYS)]
        scores = torch.stack(
            [torch.stack([-((eq[q] - protos[c]) ** 2).sum() for c in range(WAYS)]) for q in range(len(eq))]
        )
        return scores, F.cross_entropy(scores, t.query_y)

    check(ProtoNet(model, "classification", ways=WAYS, vectorize=False), theta, task, reference)


def cosine_attention(eq, es, scale=1.0):
    """a(x_hat, x_i) = softmax_i s cos(f(x_hat), g(x_i)) with F.cosine_similarity, pair by pair (Vinyals et al.
    eq. 2, with the inverse temperature s)."""
    cos = torch.stack(
        [torch.stack([F.cosine_similarity(eq[q], es[i], dim=0) for i in range(len(es))]) for q in range(len(eq))]
    )
    return torch.softmax(scale * cos, dim=1)


def label_mixture(a, sy):
    """y_hat[q, c] = sum_{i: y_i = c} a[q, i] (eq. 1), as a loop."""
    return torch.stack(
        [torch.stack([sum(a[q, i] for i in range(len(sy)) if sy[i] == c) for c in range(WAYS)]) for q in range(len(a))]
    )


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_matching_scores_are_log_cosine_attention_over_support_labels(scale):
    model, theta = model_and_params(MatchingConv4)
    task = episode(2)
    attention = {}

    def reference(p, t):
        es, eq = embed(model, p, t.support_x), embed(model, p, t.query_x)
        attention["a"] = cosine_attention(eq, es, scale)
        probs = label_mixture(attention["a"], t.support_y)
        return torch.log(probs), -torch.log(probs[torch.arange(len(eq)), t.query_y]).mean()

    algo = Matching(model, "classification", ways=WAYS, scale=scale, vectorize=False)
    got = check(algo, theta, task, reference)
    from metaserve.algorithms.matching import attention as attention_weights

    torch.testing.assert_close(
        attention_weights(embed(model, theta, task.query_x), embed(model, theta, task.support_x), scale),
        attention["a"].detach(),
        rtol=1e-10,
        atol=1e-12,
    )
    # without full-context embeddings the FCE LSTMs are unused: zero gradient, every other parameter moves
    for k, g in got.contribution.items():
        assert (float(g.norm()) == 0.0) == k.startswith(("support_", "query_att")), k


def test_scaled_matching_kernel_is_a_softmax_over_scaled_cosines_in_one_shot():
    """1-shot, closed form: log y_hat[c] = s cos_c - log sum_j exp(s cos_j); its gradient by finite differences;
    at a scale where the probabilities underflow the log-space mixture stays finite and exact."""
    from metaserve.algorithms.matching import attention_logits, log_label_mixture

    gen = torch.Generator().manual_seed(5)
    query, support = torch.randn(4, 6, generator=gen, dtype=DT), torch.randn(WAYS, 6, generator=gen, dtype=DT)
    onehot = torch.eye(WAYS, dtype=DT)  # support i is class i
    for s in (1.0, 10.0, 500.0):
        cos = torch.tensor([[float(q @ k / (q.norm() * k.norm())) for k in support] for q in query], dtype=DT)
        m = (s * cos).max(1, keepdim=True).values  # log sum exp written out, shifted so that exp never overflows
        want = s * cos - (m + torch.log(torch.exp(s * cos - m).sum(1, keepdim=True)))
        got = log_label_mixture(attention_logits(query, support, s), onehot)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)

    def loss(q, k):
        return log_label_mixture(attention_logits(q, k, 10.0), onehot)[torch.arange(4), torch.arange(4) % WAYS].sum()

    assert torch.autograd.gradcheck(loss, (query.requires_grad_(), support.requires_grad_()), eps=1e-6, atol=1e-6)


def test_unscaled_matching_loss_is_bounded_below_at_twenty_ways():
    """The stall the scale removes: at s = 1 even the ideal cosines (1 to the right support, -1 to the other 19)
    leave a loss of log(1 + 19 e^-2) = 1.27; at s = 10 it is log(1 + 19 e^-20) ~ 4e-8."""
    from metaserve.algorithms.matching import log_label_mixture

    ways = 20
    cos = torch.full((1, ways), -1.0, dtype=DT)
    cos[0, 0] = 1.0
    onehot = torch.eye(ways, dtype=DT)
    for s, bound in ((1.0, 1.27295), (10.0, 3.9163e-8)):  # log(1 + 19 e^-2s), by hand
        assert float(-log_label_mixture(s * cos, onehot)[0, 0]) == pytest.approx(bound, rel=1e-4)


def lstm_cell(weight_ih, weight_hh, bias):
    """torch.nn.LSTMCell evaluated with the given weights (bias_hh zero), via functional_call."""
    cell = nn.LSTMCell(weight_ih.shape[1], weight_ih.shape[0] // 4).to(DT)
    weights = {"weight_ih": weight_ih, "weight_hh": weight_hh, "bias_ih": bias, "bias_hh": torch.zeros_like(bias)}
    return lambda x, h, c: functional_call(cell, weights, (x, (h, c)))


def test_matching_full_context_embeddings_follow_appendix_a():
    """g = bidirectional LSTM over the support + g'; f = K steps of the attention LSTM (Vinyals et al., A.1-A.2)."""
    model, theta = model_and_params(MatchingConv4, seed=3)
    task, steps = episode(3), 3

    def reference(p, t):
        g0, f0 = embed(model, p, t.support_x), embed(model, p, t.query_x)
        d, zero = g0.shape[1], torch.zeros(g0.shape[1], dtype=DT)
        fwd = lstm_cell(p["support_fwd.x2g.weight"], p["support_fwd.s2g.weight"], p["support_fwd.x2g.bias"])
        bwd = lstm_cell(p["support_bwd.x2g.weight"], p["support_bwd.s2g.weight"], p["support_bwd.x2g.bias"])
        hf, hb, (h, c), (hr, cr) = [], [None] * len(g0), (zero, zero), (zero, zero)
        for i in range(len(g0)):
            h, c = fwd(g0[i], h, c)
            hf.append(h)
        for i in reversed(range(len(g0))):
            hr, cr = bwd(g0[i], hr, cr)
            hb[i] = hr
        g = torch.stack([hf[i] + hb[i] + g0[i] for i in range(len(g0))])
        # the attention LSTM reads [h, r] as its recurrent input: an LSTMCell over the input [f', h, r] with U = 0
        att = lstm_cell(
            torch.cat([p["query_att.x2g.weight"], p["query_att.s2g.weight"]], dim=1),
            torch.zeros(4 * d, d, dtype=DT),
            p["query_att.x2g.bias"],
        )
        h, r, c = torch.zeros_like(f0), torch.zeros_like(f0), torch.zeros_like(f0)
        for _ in range(steps):
            h_hat, c = att(torch.cat([f0, h, r], dim=1), torch.zeros_like(f0), c)
            h = h_hat + f0
            r = torch.softmax(h @ g.T, dim=1) @ g
        probs = label_mixture(cosine_attention(h, g, 10.0), t.support_y)
        return torch.log(probs), -torch.log(probs[torch.arange(len(f0)), t.query_y]).mean()

    algo = Matching(model, "classification", ways=WAYS, fce=True, fce_steps=steps, scale=10.0, vectorize=False)
    got = check(algo, theta, task, reference)
    assert all(float(g.norm()) > 0 for g in got.contribution.values())


def test_relation_scores_are_relation_module_on_concatenated_pairs_with_mse():
    model, theta = model_and_params(RelationConv4)
    task = episode(4)

    def reference(p, t):
        feats = {k.removeprefix("features."): v for k, v in p.items() if k.startswith("features.")}
        ms, mq = (
            functional_call(model.features, feats, (x,)) for x in (t.support_x, t.query_x)
        )  # [n, hidden, side, side]
        classes = [
            sum(ms[i] for i in range(len(ms)) if t.support_y[i] == c) for c in range(WAYS)
        ]  # K-shot: element-wise sum
        pairs = torch.stack(
            [torch.cat([classes[c], mq[q]], dim=0) for q in range(len(mq)) for c in range(WAYS)]
        )  # C = channel concat
        relation = {k.removeprefix("relation."): v for k, v in p.items() if k.startswith("relation.")}
        scores = torch.sigmoid(functional_call(model.relation, relation, (pairs,))).reshape(len(mq), WAYS)
        target = torch.stack(
            [torch.tensor([float(t.query_y[q] == c) for c in range(WAYS)], dtype=DT) for q in range(len(mq))]
        )
        return scores, ((scores - target) ** 2).mean()

    got = check(Relation(model, "classification", ways=WAYS, vectorize=False), theta, task, reference)
    assert all(float(g.norm()) > 0 for g in got.contribution.values())


def test_siamese_scores_are_l1_verification_logits_and_best_support_wins():
    model, theta = model_and_params(SiameseConv4)
    task = episode(5)

    def reference(p, t):
        es, eq = embed(model, p, t.support_x), embed(model, p, t.query_x)
        logit = [
            [F.linear((eq[q] - es[i]).abs(), p["verifier.weight"], p["verifier.bias"])[0] for i in range(len(es))]
            for q in range(len(eq))
        ]
        scores = torch.stack(
            [
                torch.stack(
                    [
                        max(
                            (logit[q][i] for i in range(len(es)) if t.support_y[i] == c),
                            key=lambda v: float(v.detach()),
                        )
                        for c in range(WAYS)
                    ]
                )
                for q in range(len(eq))
            ]
        )
        same = [
            -torch.log(torch.sigmoid(logit[q][i]))
            for q in range(len(eq))
            for i in range(len(es))
            if t.query_y[q] == t.support_y[i]
        ]
        diff = [
            -torch.log(1 - torch.sigmoid(logit[q][i]))
            for q in range(len(eq))
            for i in range(len(es))
            if t.query_y[q] != t.support_y[i]
        ]
        return scores, 0.5 * (sum(same) / len(same) + sum(diff) / len(diff))

    got = check(Siamese(model, "classification", ways=WAYS, vectorize=False), theta, task, reference)
    assert all(float(g.norm()) > 0 for g in got.contribution.values())


# --- vectorised path vs per-task loop ------------------------------------------------------------
LEARNERS = {
    "protonet": (ProtoNet, Conv4, {}),
    "matching": (Matching, MatchingConv4, {}),
    "matching-fce": (Matching, MatchingConv4, {"fce": True}),
    "relation": (Relation, RelationConv4, {}),
    "siamese": (Siamese, SiameseConv4, {}),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_vectorised_batch_equals_per_task_loop(name):
    cls, net, extra = LEARNERS[name]
    model, theta = model_and_params(net)
    tasks = [episode(10 + i) for i in range(3)]
    vec = cls(model, "classification", ways=WAYS, vectorize=True, **extra).batch_update(theta, tasks)
    loop = cls(model, "classification", ways=WAYS, vectorize=False, **extra).batch_update(theta, tasks)
    assert vec.count == loop.count == 3
    for k in theta:
        torch.testing.assert_close(vec.contribution[k], loop.contribution[k], rtol=1e-10, atol=1e-12)
    assert vec.metrics == pytest.approx(loop.metrics, rel=1e-10)


def test_metric_learners_need_classification():
    model, _ = model_and_params(RelationConv4)
    with pytest.raises(ValueError, match="Relation needs a classification task"):
        Relation(model, "regression", ways=WAYS)


# --- short Omniglot runs -------------------------------------------------------------------------
SHORT = [
    "train.steps=40",
    "train.log_every=40",
    "train.checkpoint_every=40",
    "train.meta_batch=4",
    "train.val_tasks=0",
    "model.hidden=32",
    "task.query=5",
    "eval.episodes=100",
    f"task.root={OMNIGLOT}",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def image_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omniglot-cache")  # decoded once for the module's runs


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"Omniglot data not found at {OMNIGLOT}")
@pytest.mark.parametrize("algorithm", ["matching", "relation", "siamese"])
def test_short_omniglot_run_beats_chance(tmp_path, image_cache, algorithm):
    """5-way 1-shot: chance is 20%; 40 steps of 4 episodes reach about 45-50% (the lower CI bound must pass 38%)."""
    cfg = as_config(
        ROOT / "configs/omniglot-protonet-5w1s.yaml",
        SHORT + [f"algorithm.name={algorithm}", f"output_dir={tmp_path}", f"task.cache_dir={image_cache}"],
    )
    result = train_loop(cfg)
    assert result.test.metric == "acc" and result.test.episodes == 100
    assert result.test.mean - result.test.ci95 > 0.38, str(result.test)
