"""Differential privacy at the sites: DP-SGD with Opacus, the budget each site keeps, and its accounting.

    settings = PrivacySettings(mode="dp-sgd", epsilon=8.0)
    ledger = PrivacyLedger.plan(settings, num_train=2500, batch_size=64, epochs=5, num_rounds=3)
    fit(model, ..., steps=private_steps(settings, ledger, num_train=2500))

Opacus is imported only when a private run needs it (it costs about 2 s).
"""

from .accountant import PrivacyBudgetExhausted, PrivacyLedger, calibrate_noise, epsilon_of, steps_per_epoch
from .dpsgd import PrivateSteps, private_steps
from .settings import ACCOUNTANTS, MODES, PrivacySettings

__all__ = ["ACCOUNTANTS", "MODES", "PrivacyBudgetExhausted", "PrivacyLedger", "PrivacySettings", "PrivateSteps",
           "calibrate_noise", "epsilon_of", "private_steps", "steps_per_epoch"]
