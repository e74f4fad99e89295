"""FID and CLIP score as the MLPerf SD reference computes them.

FID: the Frechet distance between Gaussians fitted to the generated images' features and the reference
statistics, |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)). The matrix square root is taken from the
eigenvalues of sqrt(S1) S2 sqrt(S1), which is symmetric positive semi-definite and has the same trace of
its root as S1 S2 (numerically steadier than a general sqrtm; the test compares with scipy's sqrtm).
CLIP score: the mean cosine of the normalised image and caption embeddings (frozen.clip_cosines).
"""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"FID: statistics of different sizes: {mu1.shape}/{sigma1.shape} and {mu2.shape}/"
                         f"{sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)
