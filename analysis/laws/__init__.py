"""Named laws fitted with `analysis.fitting`: loss laws L(N, D), L(N), L(C) and the compute-optimal allocation;
`curve_points` turns learning curves into (N, D, loss) points for them."""

from analysis.laws.curve_points import CurvePointsError, check_schedule_free, curve_points
from analysis.laws.loss import (allocation_exponents, compute_optimal, fit_loss, predict_loss,
                                with_derived_columns)
from analysis.laws.loss_forms import CHINCHILLA, FARSEER, FORMS, KAPLAN, L_OF_C, L_OF_N, LossForm, get_form

__all__ = [
    "CHINCHILLA", "FARSEER", "FORMS", "KAPLAN", "L_OF_C", "L_OF_N", "CurvePointsError", "LossForm",
    "allocation_exponents", "check_schedule_free", "compute_optimal", "curve_points", "fit_loss", "get_form",
    "predict_loss", "with_derived_columns",
]
