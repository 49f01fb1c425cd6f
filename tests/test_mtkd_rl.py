"""`mtkd_rl` equals its authors' code: the student's loss (values and gradients), the agent's
weights and its learning, step after step, in float64 on random inputs, with 2 and 3 teachers, to
1e-6 relative; and where it differs on purpose (one teacher; teachers on different grids), the
tests show how.

The reference below is written here from reading winycg/MTKD-RL at
4e2b62adb2bab0d3fde4118e19c4ac2fb8006991 (never copied), in their order of operations:
- `train_loops.py:50-73` (get_agent_state), `:29-47` (train_agent), `:199-299` (train: actions,
  losses, reward, when the agent learns)
- `models/policy.py:23-70` (PolicyTrans), `models/util.py:162-183` (TransFeat), `:214-241` (Embed)
- `distiller_zoo/feature_mse_mtkd_rl.py:6-15` (FeatureMSELoss), `utils.py:124-137` (DistillKL)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtkd.errors import MtkdError
from mtkd.methods import StudentOutputs, TeacherOutputs, build_method
from mtkd.methods.base import FINAL_MAP, Step

# ---- reference -------------------------------------------------------------------------------


def ref_distill_kl(y_s, y_t, t):
    """utils.py:130-137 with unreduce=True."""
    p_s = F.log_softmax(y_s / t, dim=1)
    p_t = F.softmax(y_t / t, dim=1)
    return (nn.KLDivLoss(reduction="none")(p_s, p_t) * (t**2)).sum(-1)


def ref_feature_mse(f_s, f_t):
    """feature_mse_mtkd_rl.py:11-15."""
    f_s = f_s.view(f_s.size(0), -1)
    f_t = f_t.view(f_t.size(0), -1)
    return ((f_s - f_t) ** 2).mean(1)


class RefTransFeat(nn.Module):
    """util.py:162-183 (Embed without convs: 1x1 conv, BN, ReLU), its `feat_s` reassigned per teacher."""

    def __init__(self, s_channel, t_sizes):
        super().__init__()
        self.t_sizes = t_sizes
        for i, size in enumerate(t_sizes):
            embed = nn.Sequential(
                nn.Conv2d(s_channel, size[1], kernel_size=1), nn.BatchNorm2d(size[1]), nn.ReLU()
            )
            setattr(self, "embed" + str(i), embed)

    def forward(self, feat_s):
        out = []
        s_h = feat_s.shape[2]
        for i, size in enumerate(self.t_sizes):
            t_h = size[2]
            if s_h >= t_h:
                feat_s = F.adaptive_avg_pool2d(feat_s, (t_h, t_h))
            else:
                feat_s = F.interpolate(feat_s, size=(t_h, t_h), mode="bilinear")
            out.append(getattr(self, "embed" + str(i))(feat_s))
        return out


class RefPolicyTrans(nn.Module):
    """policy.py:23-70."""

    def __init__(self, input_size, teacher_num, dynamic):
        super().__init__()
        self.teacher_num = teacher_num
        self.steam = nn.Sequential(nn.Linear(sum(input_size), 128, bias=False), nn.ReLU())
        self.logit_head = nn.Linear(128, teacher_num, bias=True)
        self.feature_head = nn.Linear(128, teacher_num, bias=True)
        self.dynamic = dynamic
        if dynamic:
            self.logit_weight_factor = nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))
            self.feature_weight_factor = nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))

    def forward(self, agent_state):
        teacher_infos, t_ces, t_s_logit_div, t_s_feat_div = agent_state
        weight_loss_t = (1.0 - F.softmax(t_ces, dim=1)) / (self.teacher_num - 1)
        weight_loss_t_s_logit_div = F.softmax(t_s_logit_div, dim=1)
        weight_loss_t_s_feat_div = F.softmax(t_s_feat_div, dim=1)
        out1 = self.steam(torch.cat(teacher_infos, dim=1))
        logit_weights = F.softmax(self.logit_head(out1), dim=1)
        feature_weights = F.softmax(self.feature_head(out1), dim=1)
        if self.dynamic:
            l_f = F.softmax(self.logit_weight_factor, dim=0)
            f_f = F.softmax(self.feature_weight_factor, dim=0)
            return (l_f[0] * logit_weights + l_f[1] * weight_loss_t + l_f[2] * weight_loss_t_s_logit_div,
                    f_f[0] * feature_weights + f_f[1] * weight_loss_t + f_f[2] * weight_loss_t_s_feat_div)  # fmt: skip
        return ((logit_weights + weight_loss_t + weight_loss_t_s_logit_div) / 3.0,
                (feature_weights + weight_loss_t + weight_loss_t_s_feat_div) / 3.0)  # fmt: skip


def ref_agent_state(trans, t_embeddings, logits, t_logits, targets, t):
    """train_loops.py:50-73."""
    embeddings = [F.adaptive_avg_pool2d(f, (1, 1)).view(f.size(0), -1) for f in trans]
    infos, ces, kls, coss = [], [], [], []
    for i in range(len(t_embeddings)):
        cos = F.cosine_similarity(embeddings[i], t_embeddings[i]).unsqueeze(-1)
        coss.append(cos)
        kl = ref_distill_kl(logits, t_logits[i], t).unsqueeze(-1)
        kls.append(kl)
        ce = F.cross_entropy(t_logits[i], targets, reduction="none").unsqueeze(-1)
        ces.append(ce)
        infos.append(torch.cat([cos, kl, ce, t_embeddings[i], t_logits[i]], dim=1).detach())
    return (
        infos,
        torch.cat(ces, dim=1).detach(),
        torch.cat(kls, dim=1).detach(),
        torch.cat(coss, dim=1).detach(),
    )


def ref_train_agent(agent, states, rewards, lr):
    """train_loops.py:29-47 with SGD(lr) (train_student_rl.py:306)."""
    opt = torch.optim.SGD(agent.parameters(), lr=lr)
    for state, reward in zip(states, rewards, strict=True):
        pred = agent(state)
        opt.zero_grad()
        label = torch.ones_like(pred[0]).detach()
        loss = F.binary_cross_entropy(pred[1], label, weight=reward.unsqueeze(-1)) + F.binary_cross_entropy(
            pred[0], label, weight=reward.unsqueeze(-1)
        )
        loss.backward()
        opt.step()


def ref_step(logits, trans, t_maps, t_emb, t_logits, targets, agent, epoch, t=4.0, feat_weight=5.0):
    """train_loops.py:228-287 for one batch: (loss, state, reward); epoch from 0."""
    state = ref_agent_state(trans, t_emb, logits, t_logits, targets, t)
    with torch.no_grad():
        a, f = agent(state)
    if epoch == 0:
        a, f = torch.ones_like(a), torch.ones_like(f)
    loss_cls = F.cross_entropy(logits, targets)
    loss_kd = torch.tensor(0.0, dtype=logits.dtype)
    for i in range(len(t_logits)):
        loss_kd = loss_kd + (a[:, i] * ref_distill_kl(logits, t_logits[i].detach(), t)).mean()
    loss_feat = torch.tensor(0.0, dtype=logits.dtype)
    for i in range(len(t_logits)):
        loss_feat = loss_feat + (f[:, i] * ref_feature_mse(trans[i], t_maps[i])).mean()
    loss_feat = feat_weight * loss_feat
    sample_kd = sum(a[:, i] * ref_distill_kl(logits, t_logits[i].detach(), t) for i in range(len(t_logits)))
    sample_feat = sum(f[:, i] * ref_feature_mse(trans[i], t_maps[i]) for i in range(len(t_logits)))
    reward = -(F.cross_entropy(logits, targets, reduction="none") + sample_kd + feat_weight * sample_feat)
    reward = torch.clamp(((reward - reward.mean()) / reward.std()).detach(), min=0, max=1)
    return loss_cls + loss_kd + loss_feat, loss_cls, state, reward


# ---- comparisons -----------------------------------------------------------------------------

B, C, DS = 8, 5, 12
GRIDS = [(20, 4), (16, 4), (24, 4)]  # (channels, grid) of each teacher's last map: one grid


def _pair(k, dynamic, grids=GRIDS, agent_step=2):
    ours = build_method(
        "mtkd_rl", {"agent_step": agent_step, "dynamic": dynamic}, DS, [g[0] for g in grids[:k]], C
    )
    ours = ours.double()
    trans = RefTransFeat(DS, [(1, g[0], g[1], g[1]) for g in grids[:k]]).double()
    for i, embed in enumerate(ours.embeddings):
        getattr(trans, f"embed{i}").load_state_dict(embed.state_dict())
    agent = None
    if k > 1:
        agent = RefPolicyTrans([g[0] + C + 3 for g in grids[:k]], k, dynamic).double()
        mine = ours.agent
        agent.steam.load_state_dict(mine.stem.state_dict())
        agent.logit_head.load_state_dict(mine.logit_head.state_dict())
        agent.feature_head.load_state_dict(mine.feature_head.state_dict())
        if dynamic:
            with torch.no_grad():
                agent.logit_weight_factor.copy_(mine.logit_mix)
                agent.feature_weight_factor.copy_(mine.feature_mix)
    return ours, trans, agent


def _batch(g, k, grids=GRIDS, s_grid=8):
    logits = torch.randn(B, C, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    fmap = torch.randn(B, DS, s_grid, s_grid, generator=g, dtype=torch.float64).requires_grad_()
    teachers = []
    for c, h in grids[:k]:
        t_map = torch.randn(B, c, h, h, generator=g, dtype=torch.float64).relu()
        t_logits = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
        teachers.append(TeacherOutputs(t_map.mean((2, 3)), t_logits, {FINAL_MAP: t_map}))
    y = torch.randint(0, C, (B,), generator=g)
    return logits, fmap, teachers, y


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("k", [2, 3])
def test_mtkd_rl_equals_its_authors_over_two_epochs(k, dynamic):
    ours, trans, agent = _pair(k, dynamic)
    g = torch.Generator().manual_seed(10 * k + dynamic)
    states, rewards = [], []
    for epoch in (1, 2):
        for step in range(4):  # the agent learns after steps 2 (2 % agent_step == 0) and 3 (the last)
            logits, fmap, teachers, y = _batch(g, k)
            where = Step(epoch=epoch, step=step, steps_per_epoch=4, epochs=2)
            ref_trans = trans(fmap)
            t_maps = [t.maps[FINAL_MAP] for t in teachers]
            ref_total, ref_ce, state, reward = ref_step(
                logits, ref_trans, t_maps, [t.features for t in teachers], [t.logits for t in teachers], y, agent,
                epoch - 1,
            )  # fmt: skip
            states.append(state)
            rewards.append(reward)
            if (step % 2 == 0 and step != 0) or step == 3:
                ref_train_agent(agent, states, rewards, 0.1)
                states, rewards = [], []
            terms = ours(StudentOutputs(logits, fmap.mean((2, 3)), fmap=fmap), teachers, y, where)
            total = F.cross_entropy(logits, y) + terms["mtkd_rl_kd"] + terms["mtkd_rl_features"]
            params = [logits, fmap, *ours.embeddings.parameters()]
            ref_params = [
                logits,
                fmap,
                *[p for i in range(k) for p in getattr(trans, f"embed{i}").parameters()],
            ]
            assert total.item() == pytest.approx(ref_total.item(), rel=1e-6)
            for a, b in zip(
                torch.autograd.grad(total, params), torch.autograd.grad(ref_total, ref_params), strict=True
            ):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)
            mine = dict(ours.agent.named_parameters())
            theirs = {"stem.0.weight": agent.steam[0].weight, "logit_head.weight": agent.logit_head.weight,
                      "logit_head.bias": agent.logit_head.bias, "feature_head.bias": agent.feature_head.bias}  # fmt: skip
            if dynamic:
                theirs |= {"logit_mix": agent.logit_weight_factor, "feature_mix": agent.feature_weight_factor}
            for name, value in theirs.items():  # the agent learnt as theirs did
                torch.testing.assert_close(mine[name], value, rtol=1e-6, atol=1e-12)
    assert ours.kept == []  # dropped once learnt


def test_mtkd_rl_with_one_teacher_has_weights_one_where_theirs_divides_by_zero():
    ours, trans, _ = _pair(1, True)
    assert ours.agent is None
    g = torch.Generator().manual_seed(0)
    logits, fmap, teachers, y = _batch(g, 1)
    agent = RefPolicyTrans([GRIDS[0][0] + C + 3], 1, True).double()
    state = ref_agent_state(trans(fmap), [teachers[0].features], logits, [teachers[0].logits], y, 4.0)
    assert torch.isnan(agent(state)[0]).all()  # (1 - softmax) / (K - 1) with K = 1
    terms = ours(StudentOutputs(logits, fmap.mean((2, 3)), fmap=fmap), teachers, y, Step(epoch=5))
    kd = ref_distill_kl(logits, teachers[0].logits, 4.0).mean()
    feats = 5.0 * ref_feature_mse(trans(fmap)[0], teachers[0].maps[FINAL_MAP]).mean()
    assert terms["mtkd_rl_kd"].item() == pytest.approx(kd.item(), rel=1e-6)
    assert terms["mtkd_rl_features"].item() == pytest.approx(feats.item(), rel=1e-6)


def test_mtkd_rl_embeds_the_students_own_map_for_each_teacher_grid():
    """Teachers on grids 4 then 2 from a student grid of 8: their TransFeat embeds, for the second,
    the 4x4 map pooled again (the same numbers: average pooling nests); on grids 2 then 4 it
    embeds a 2x2 map resized up (others than ours: ours resize the student's 8x8 map)."""
    for grids, same in (([(20, 4), (16, 2)], True), ([(20, 2), (16, 4)], False)):
        ours, trans, _ = _pair(2, True, grids)
        g = torch.Generator().manual_seed(1)
        logits, fmap, teachers, y = _batch(g, 2, grids)
        ours.train()
        theirs = trans(fmap)[1]
        from mtkd.methods.camkd import to_grid

        mine = ours.embeddings[1](to_grid(fmap, (grids[1][1], grids[1][1])))
        assert torch.allclose(mine, theirs) == same


def test_mtkd_rl_keeps_its_agent_and_kept_batches_in_its_state():
    ours, _, _ = _pair(2, True, agent_step=1000)
    g = torch.Generator().manual_seed(2)
    for step in range(2):  # kept, not yet learnt from (4 steps in the epoch)
        logits, fmap, teachers, y = _batch(g, 2)
        ours(
            StudentOutputs(logits, fmap.mean((2, 3)), fmap=fmap),
            teachers,
            y,
            Step(epoch=2, step=step, steps_per_epoch=4),
        )
    saved = ours.state_dict()
    again, _, _ = _pair(2, True, agent_step=1000)
    again.load_state_dict(saved)
    assert len(again.kept) == 2
    for (s1, r1), (s2, r2) in zip(ours.kept, again.kept, strict=True):
        assert torch.equal(r1, r2) and all(torch.equal(s1[key], s2[key]) for key in s1)
    saved["_extra_state"] = {"states": [{"info": torch.zeros(3, 2)}], "rewards": [torch.zeros(3)]}
    with pytest.raises(MtkdError, match="cannot resume"):
        again.load_state_dict(saved)


@pytest.mark.parametrize("name", ["camkd", "mtkd_rl"])
def test_a_student_layer_by_module_path_is_read_as_the_last_map_is(name):
    """`student_layer` names the student map the embeddings read (default: the last feature map);
    the embeddings are then sized from its shape when the run starts."""
    from mtkd.methods.base import RunContext

    g = torch.Generator().manual_seed(4)
    logits, fmap, teachers, y = _batch(g, 2)
    for t in teachers:  # camkd's map term reads each teacher's classifier on the embedded map
        head = nn.Linear(t.maps[FINAL_MAP].shape[1], C).double()
        t.head = lambda m, head=head: head(m.mean((2, 3)))
    options = {"feature_weight": 5.0} if name == "camkd" else {}
    default = build_method(name, options, DS, [20, 16], C).double()
    by_path = build_method(name, {**options, "student_layer": "blocks.3"}, DS, [20, 16], C)
    assert by_path.student_maps() == ["blocks.3"] and by_path.needs_shapes and not default.needs_shapes
    by_path.setup(RunContext(torch.zeros(4, dtype=torch.long), 0, {"blocks.3": (DS, 8, 8)}, []))
    by_path = by_path.double()
    by_path.load_state_dict(default.state_dict())
    step = Step(epoch=3)
    a = default(StudentOutputs(logits, fmap.mean((2, 3)), fmap=fmap), teachers, y, step)
    b = by_path(StudentOutputs(logits, fmap.mean((2, 3)), maps={"blocks.3": fmap}), teachers, y, step)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MtkdError, match="not a \\[C, H, W\\] map"):
        build_method(name, {**options, "student_layer": "fc"}, DS, [20, 16], C).setup(
            RunContext(torch.zeros(4, dtype=torch.long), 0, {"fc": (C,)}, [])
        )


def test_camkd_student_layer_is_for_the_map_term_only():
    with pytest.raises(MtkdError, match="student_layer is read by feature: map only"):
        build_method("camkd", {"feature": "pooled", "student_layer": "blocks.3"}, DS, [20, 16], C)
