"""Version and vocabulary of the pixel OOD metric definitions ("metric spec v1").

Every result that later code writes stores ``METRIC_SPEC_VERSION`` so a number can always be
traced back to the definitions documented in the README (AUROC, AP, FPR@95 conventions,
pooling). Bump it whenever a definition changes.
"""

METRIC_SPEC_VERSION = "1"

#: The FPR@95 conventions: "first" (SMIYC, Fishyscapes, EAM), "closest" (Hendrycks'
#: ``fpr_and_fdr_at_recall`` as used by PEBAL, RPL), "interpolated" (``ood_metrics.fpr_at_95_tpr``
#: as used by Mask2Anomaly).
FPR_CONVENTIONS = ("first", "closest", "interpolated")

#: The true-positive rate at which FPR@95 is read.
TPR_LEVEL = 0.95
