"""Greedy: balanced multimodal learning against the greedy nature of multimodal DNNs (Wu,
Jastrzebski, Cho & Geras, "Characterizing and Overcoming the Greedy Nature of Learning in
Multi-modal Deep Neural Networks", ICML 2022), for N modalities.

The paper's diagnosis: a multimodal network learns greedily through the modality it fits fastest
and leaves the others under-trained. It measures each modality's *conditional learning speed*, the
relative size of the updates its parameters receive, and when the speeds drift apart it switches
to *re-balancing* steps that train the slow modality's conditional path until they meet again.

Per step (normal mode), after the fused loss's backward:

    speed_m = ||grad theta_m||^2 / ||theta_m||^2     (theta_m: encoder m's parameters)

averaged over the last ``window`` normal steps. With the fastest and slowest modality,

    imbalance = 1 - speed_slow / speed_fast   in [0, 1),

and when it exceeds ``alpha`` the next ``rebalance_steps`` steps are re-balancing steps: the loss
of the slow modality's branch (the others zeroed, the framework's masking, standing in for the
paper's averaged cross-modal inputs) trains its encoder and the head. Then normal steps resume
with a fresh window.

N modalities: the speeds of all N encoders; the slowest one is re-balanced against the fastest
(at N = 2 the paper's pair). Any fusion head, both tasks.

Source note: only the paper's abstract was readable from this machine. Conditional learning speed
as the relative squared size of a modality's parameter gradients, the threshold that triggers
re-balancing and the re-balancing steps on the slow modality's conditional path follow our reading
of the paper; measuring on the encoders (the paper measures the parameters of its MMTM-style
fusion layers), the relative (scale-free) imbalance and the zero-masked branch are mmsent's
choices, which make the method independent of the fusion head.
"""
from __future__ import annotations

from dataclasses import dataclass


from mmsent.config import check, finite
from mmsent.strategies.base import Strategy


def learning_speed(params) -> float:
    """``||grad||^2 / ||theta||^2`` over the parameters that have a gradient."""
    g2 = sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None)
    w2 = sum(float(p.detach().pow(2).sum()) for p in params if p.grad is not None)
    return g2 / w2 if w2 > 0 else 0.0


def imbalance(speeds: dict[str, float]) -> tuple[float, str]:
    """``1 - slowest / fastest`` and the slowest modality."""
    slow = min(speeds, key=speeds.get)
    fast = max(speeds.values())
    return (1.0 - speeds[slow] / fast if fast > 0 else 0.0), slow


@dataclass(frozen=True)
class GreedySettings:
    alpha: float = 0.5  # imbalance threshold that triggers re-balancing
    window: int = 5  # normal steps averaged into the speeds
    rebalance_steps: int = 5  # steps of one re-balancing phase

    def __post_init__(self):
        check("alpha", finite(self.alpha) and 0 <= self.alpha < 1, self.alpha, "a number in [0, 1)")
        check("window", self.window >= 1, self.window, "an integer >= 1")
        check("rebalance_steps", self.rebalance_steps >= 1, self.rebalance_steps, "an integer >= 1")


class Greedy(Strategy):
    Settings = GreedySettings

    def __init__(self, model, optimizer, task, **kw):
        super().__init__(model, optimizer, task, **kw)
        self.history: list[list[float]] = []  # speeds of the recent normal steps, in modality order
        self.slow: str | None = None  # the modality being re-balanced
        self.left = 0  # re-balancing steps still to run

    def train_step(self, batch):
        s, mods = self.settings, self.model.modalities
        if self.left > 0:
            # only the slow modality is encoded: the others' inputs are zeros of their feature shape,
            # so their encoders do no work, get no gradient (the optimizer skips them: no momentum or
            # decay step) and keep their BatchNorm statistics
            feats = self.model.encode(batch, [self.slow])
            loss = self.task.loss(self.branches(feats, [self.slow])[self.slow], batch.y)
            self.update(loss)
            self.left -= 1
            return {"loss": loss.item(), "rebalance": 1.0}
        loss = self.task.loss(self.model.head(self.model.encode(batch)), batch.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.sync_grads(self.model.parameters())  # speeds from the global batch's gradient
        speeds = [learning_speed(list(self.model.encoders[m].parameters())) for m in mods]
        self.history = [*self.history, speeds][-s.window:]
        self.clip_and_step()
        mean = {m: sum(h[i] for h in self.history) / len(self.history) for i, m in enumerate(mods)}
        gap, slow = imbalance(mean)
        if len(self.history) == s.window and gap > s.alpha:
            self.slow, self.left, self.history = slow, s.rebalance_steps, []
        return {"loss": loss.item(), "imbalance": gap}

    def state_dict(self):
        return {**super().state_dict(), "history": self.history, "slow": self.slow or "", "left": self.left}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.history, self.slow, self.left = state["history"], state["slow"] or None, state["left"]
