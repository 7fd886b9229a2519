import pytest

from rlhflab.algorithms.kl_control import KLController


def test_fixed_controller_never_moves():
    ctl = KLController(0.05)
    ctl.update(100.0, 32)
    assert ctl.value == 0.05


def test_adaptive_controller_hand_values():
    # e = clip(KL/target − 1, ±0.2); β ← β (1 + e n / horizon)
    ctl = KLController(0.1, target=6.0, horizon=100)
    ctl.update(9.0, 10)  # e = clip(0.5) = 0.2 → β = 0.1 · (1 + 0.2·10/100) = 0.102
    assert ctl.value == pytest.approx(0.102, abs=1e-12)
    ctl.update(5.4, 50)  # e = −0.1 → β = 0.102 · (1 − 0.1·50/100) = 0.0969
    assert ctl.value == pytest.approx(0.0969, abs=1e-12)
    ctl.update(6.0, 50)  # e = 0 → unchanged
    assert ctl.value == pytest.approx(0.0969, abs=1e-12)


def test_state_round_trip():
    ctl = KLController(0.1, target=6.0)
    ctl.update(12.0, 1000)
    other = KLController(0.1, target=6.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value
