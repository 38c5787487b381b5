"""Named laws fitted with `analysis.fitting`: loss laws L(N, D), L(N), L(C) and the compute-optimal allocation."""

from analysis.laws.loss import (allocation_exponents, compute_optimal, fit_loss, predict_loss,
                                with_derived_columns)
from analysis.laws.loss_forms import CHINCHILLA, FARSEER, FORMS, KAPLAN, L_OF_C, L_OF_N, LossForm, get_form

__all__ = [
    "CHINCHILLA", "FARSEER", "FORMS", "KAPLAN", "L_OF_C", "L_OF_N", "LossForm", "allocation_exponents",
    "compute_optimal", "fit_loss", "get_form", "predict_loss", "with_derived_columns",
]
