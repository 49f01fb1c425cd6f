"""`mtkd_rl`: multi-teacher KD with reinforcement learning (Yang, Wang et al., AAAI 2025,
"Multi-Teacher Knowledge Distillation with Reinforcement Learning for Visual Recognition"), as its
authors publish it in winycg/MTKD-RL at 4e2b62a (`train_loops.py`, `models/policy.py`,
`models/util.py`, `distiller_zoo/feature_mse_mtkd_rl.py`, `utils.py`).

An agent gives each image a weight per teacher for the logit term and one for the feature term:

    kd       = sum_k mean_b a[b,k] KL_k[b]                KL_k: T^2 KL(softmax(t_k/T) || softmax(s/T))
    features = feat_weight * sum_k mean_b f[b,k] MSE_k[b]  MSE_k: mean_CHW (E_k(s_map) - t_k_map)^2

(train_loops.py:255-268; FeatureMSELoss, feature_mse_mtkd_rl.py:6-15). E_k is a 1x1 conv + BN +
ReLU of the student's last feature map, average-pooled (or bilinearly resized up) to teacher k's
grid (TransFeat, models/util.py:162-183; Embed :214-241).

The agent's state (get_agent_state, train_loops.py:50-73) holds, per teacher: the cosine of the
pooled E_k(s_map) with the teacher's pooled features, KL_k, the teacher's cross-entropy on the
label, its pooled features and its logits, all detached. The agent (PolicyTrans,
models/policy.py:23-70) is a linear layer (no bias, 128) + ReLU and two heads (linear, softmax over
teachers); `dynamic: true` (the README's command) mixes each head with the CA-MKD weights
(1 - softmax_k(CE_k)) / (K - 1) and with softmax_k(KL_k) (logits) or softmax_k(cos_k) (features)
through a learned softmax over the three (:60-64), else their mean (:66-67). In the first epoch
every weight is 1 (train_loops.py:236-238).

The reward of an image is -(CE + sum_k a KL_k + feat_weight sum_k f MSE_k), standardised over the
batch (unbiased std) and clamped to [0, 1] (:276-287). States and rewards are kept, and every
`agent_step` steps (batch_idx % agent_step == 0, not at 0) and at the end of the epoch the agent
takes one SGD step (lr `agent_lr`, plain) per kept batch on the reward-weighted binary cross-entropy
of both heads against 1 (train_agent, :29-47), and the kept batches are dropped. Defaults: the
authors' (`train_student_rl.py:81-94` and the README): T 4, feat_weight 5, agent_step 1000,
agent_lr 0.1, dynamic.

What differs, and why:
- TransFeat resizes, for each next teacher, the map it resized for the previous one (`feat_s` is
  reassigned in its loop); here every teacher's embedding reads the student's own map resized (as
  mtkd's camkd does). The two agree when the teachers' grids are equal; tests show both.
- With one teacher, their (1 - softmax)/(K - 1) divides by 0; here every weight is 1 (KD plus the
  feature term) and there is no agent.
- The agent trains inside the step, after this batch's state and reward are kept, instead of after
  the student's optimiser step: the student's step does not read the agent and the kept states are
  detached, so the numbers are the same. Under torchrun the agent's gradients are averaged over the
  processes (their agent is wrapped in DDP).
The agent, its kept states and rewards are the method's state: they live in the resume state, so an
interrupted run resumes with the same bits. Memory: the kept states, up to agent_step batches of
K x (D_k + classes + 3) floats per image.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mtkd.dist import mean_over_processes
from mtkd.errors import MtkdError
from mtkd.methods.base import (
    FINAL_MAP,
    Method,
    MethodOptions,
    RunContext,
    Step,
    StudentOutputs,
    TeacherOutputs,
    kl_per_sample,
    register,
    softened,
)
from mtkd.methods.camkd import embedding, embeddings_for, student_map, to_grid


class MTKDRLOptions(MethodOptions):
    temperature: float = Field(4.0, gt=0, description="--kd-T")
    feat_weight: float = Field(5.0, ge=0, description="--feat-weight: weight of the feature term")
    agent_step: int = Field(1000, ge=1, description="--agent-step: the agent learns every this many steps")
    agent_lr: float = Field(0.1, gt=0, description="learning rate of the agent's SGD")
    dynamic: bool = Field(
        True, description="--dynamic: learn how to mix the agent's weights with the fixed ones"
    )
    student_layer: str | None = Field(
        None, description="the student module path whose map is embedded (default: its last map)"
    )


class Policy(nn.Module):
    """The agent: state in, (logit weights, feature weights) [B, K] out."""

    def __init__(self, input_sizes: list[int], dynamic: bool):
        super().__init__()
        self.teachers = len(input_sizes)
        self.stem = nn.Sequential(nn.Linear(sum(input_sizes), 128, bias=False), nn.ReLU())
        self.logit_head = nn.Linear(128, self.teachers)
        self.feature_head = nn.Linear(128, self.teachers)
        self.dynamic = dynamic
        if dynamic:
            self.logit_mix = nn.Parameter(torch.ones(3))
            self.feature_mix = nn.Parameter(torch.ones(3))

    def forward(self, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        by_ce = (1.0 - F.softmax(state["ce"], dim=1)) / (self.teachers - 1)
        by_kl = F.softmax(state["kl"], dim=1)
        by_cos = F.softmax(state["cos"], dim=1)
        out = self.stem(state["info"])
        logit_w = F.softmax(self.logit_head(out), dim=1)
        feature_w = F.softmax(self.feature_head(out), dim=1)
        if self.dynamic:
            lm, fm = F.softmax(self.logit_mix, dim=0), F.softmax(self.feature_mix, dim=0)
            return lm[0] * logit_w + lm[1] * by_ce + lm[2] * by_kl, fm[0] * feature_w + fm[1] * by_ce + fm[
                2
            ] * by_cos
        return (logit_w + by_ce + by_kl) / 3.0, (feature_w + by_ce + by_cos) / 3.0


@register
class MTKDRL(Method):
    name = "mtkd_rl"
    paper = (
        "Yang, Wang et al., AAAI 2025, Multi-Teacher KD with Reinforcement Learning for Visual Recognition"
    )
    reads = ("logits", "pooled features", "last feature maps")
    trains = "a 1x1 conv + BN + ReLU embedding per teacher, and the agent (its own SGD, on its reward)"
    Options = MTKDRLOptions
    needs_logits = True
    hard_labels = True  # the teachers' cross-entropy and the reward read one class per image
    may_skip_parameters = True  # the agent gets no gradient from the student's loss

    def __init__(self, options: MTKDRLOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__(options, student_dim, teacher_dims, num_classes)
        self.teacher_dims = list(teacher_dims)
        self.needs_shapes = options.student_layer is not None  # its channels: known when the run starts
        if not self.needs_shapes:
            self.embeddings = nn.ModuleList(embedding(student_dim, d) for d in teacher_dims)
        self.agent = (
            Policy([d + num_classes + 3 for d in teacher_dims], options.dynamic)
            if len(teacher_dims) > 1
            else None
        )
        self.kept: list[
            tuple[dict[str, torch.Tensor], torch.Tensor]
        ] = []  # (state, reward) since the agent last learnt

    def teacher_maps(self) -> list[str]:
        return [FINAL_MAP]

    def student_maps(self) -> list[str]:
        return [self.options.student_layer] if self.needs_shapes else []

    def setup(self, run: RunContext) -> None:
        if self.needs_shapes:
            self.embeddings = embeddings_for(run, self.options.student_layer, self.teacher_dims)

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        o = self.options
        fmap = student_map(student, o.student_layer, "mtkd_rl")
        logits = student.logits
        trans = [
            embed(to_grid(fmap, tuple(t.maps[FINAL_MAP].shape[-2:])))
            for embed, t in zip(self.embeddings, teachers, strict=True)
        ]
        kl = [kl_per_sample(logits, softened(t.logits, o.temperature), o.temperature) for t in teachers]
        mse = [
            (e - t.maps[FINAL_MAP]).pow(2).flatten(1).mean(1) for e, t in zip(trans, teachers, strict=True)
        ]
        ones = torch.ones(len(logits), len(teachers), dtype=logits.dtype, device=logits.device)
        state = self.state_of(trans, teachers, kl, labels) if self.agent is not None else None
        if state is None or step.epoch == 1:
            a, f = ones, ones
        else:
            with torch.no_grad():
                a, f = (w.to(logits.dtype) for w in self.agent(state))
        kd = sum((a[:, k] * kl[k]).mean() for k in range(len(teachers)))
        feats = sum((f[:, k] * mse[k]).mean() for k in range(len(teachers)))
        if state is not None:
            with torch.no_grad():
                reward = -(
                    F.cross_entropy(logits, labels, reduction="none")
                    + sum(a[:, k] * kl[k] for k in range(len(teachers)))
                    + o.feat_weight * sum(f[:, k] * mse[k] for k in range(len(teachers)))
                )
                reward = ((reward - reward.mean()) / reward.std()).clamp(0, 1)
            self.kept.append((state, reward.to(state["info"].dtype)))
            if (step.step % o.agent_step == 0 and step.step != 0) or step.step == step.steps_per_epoch - 1:
                self.learn()
        return {"mtkd_rl_kd": o.weight * kd, "mtkd_rl_features": o.weight * o.feat_weight * feats}

    def state_of(
        self,
        trans: list[torch.Tensor],
        teachers: list[TeacherOutputs],
        kl: list[torch.Tensor],
        labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The agent's view of a batch (detached, in the agent's precision: float32 under autocast)."""
        with torch.no_grad():
            infos, ces, coss = [], [], []
            for e, t, d in zip(trans, teachers, kl, strict=True):
                cos = F.cosine_similarity(F.adaptive_avg_pool2d(e, 1).flatten(1), t.features)
                ce = F.cross_entropy(t.logits, labels, reduction="none")
                infos.append(torch.cat([cos[:, None], d[:, None], ce[:, None], t.features, t.logits], 1))
                ces.append(ce)
                coss.append(cos)
            state = {
                "info": torch.cat(infos, 1),
                "ce": torch.stack(ces, 1),
                "kl": torch.stack(kl, 1),
                "cos": torch.stack(coss, 1),
            }
            dtype = next(self.agent.parameters()).dtype
            return {k: v.detach().to(dtype) for k, v in state.items()}

    def learn(self) -> None:
        """One plain SGD step of the agent per kept batch, on the reward-weighted BCE of both heads
        against 1; then the kept batches are dropped."""
        assert self.agent is not None
        params = list(self.agent.parameters())
        device = params[0].device
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for state, reward in self.kept:
                state = {k: v.to(device) for k, v in state.items()}
                w = reward.to(device).unsqueeze(-1)
                logit_w, feature_w = self.agent(state)
                loss = F.binary_cross_entropy(feature_w, torch.ones_like(feature_w), weight=w)
                loss = loss + F.binary_cross_entropy(logit_w, torch.ones_like(logit_w), weight=w)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        p.sub_(self.options.agent_lr * mean_over_processes(g))
        self.kept = []

    def get_extra_state(self) -> Any:
        return {
            "states": [{k: v.cpu() for k, v in s.items()} for s, _ in self.kept],
            "rewards": [r.cpu() for _, r in self.kept],
        }

    def set_extra_state(self, saved: Any) -> None:
        try:
            states, rewards = saved["states"], saved["rewards"]
            assert len(states) == len(rewards)
            for s, r in zip(states, rewards, strict=True):
                assert set(s) == {"info", "ce", "kl", "cos"} and all(
                    isinstance(v, torch.Tensor) for v in s.values()
                )
                assert isinstance(r, torch.Tensor) and r.dim() == 1 and s["info"].shape[0] == len(r)
        except (AssertionError, KeyError, TypeError):
            raise MtkdError(
                "mtkd_rl: the saved agent's kept batches are not what it writes; cannot resume"
            ) from None
        self.kept = list(zip(states, rewards, strict=True))
