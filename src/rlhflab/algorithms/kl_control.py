"""KL coefficient controllers: fixed β, or the adaptive proportional controller of Ziegler et al. (2019)."""

from __future__ import annotations


class KLController:
    """β for the next step. Adaptive when ``target`` is set:

    e = clip(KL / target − 1, −0.2, 0.2);   β ← β · (1 + e · n / horizon)

    where KL is the mean summed k1 KL per sequence and n the number of samples of the step.
    """

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
