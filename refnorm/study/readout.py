"""The linear readout on top of the cell, its losses and their hand-written gradients.

The model predicts from the last valid hidden state h_T (B, H) of each sequence:

    (READ 1)  s = h_T W + c                                   W (H, K), c (K,), s (B, K)
    (READ 2)  classification: p = softmax(s),  L = −(1/B) Σ_b log p[b, y_b]
              regression:     L = (1/B) Σ_b Σ_k (s[b, k] − y[b, k])²

and hands the cell dL/dh_T (as backward's dhT); dhs is zero because no other step is read.

    (READ 3)  classification: dL/ds = (p − onehot(y)) / B
              regression:     dL/ds = 2 (s − y) / B
    (READ 4)  dL/dW = h_Tᵀ dL/ds,   dL/dc = Σ_b dL/ds[b],   dL/dh_T = dL/ds Wᵀ
"""
import numpy as np


def readout_forward(hT, W, c):
    """(READ 1): scores s (B, K)."""
    return hT @ W + c


def softmax_cross_entropy(scores, labels):
    """(READ 2), (READ 3): mean cross-entropy of integer labels (B,) and dL/dscores (B, K).
    Scores are shifted by their row maximum first, which changes nothing but the overflow."""
    B = scores.shape[0]
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))    # (B, K)
    loss = -log_p[np.arange(B), labels].mean()
    dscores = np.exp(log_p)
    dscores[np.arange(B), labels] -= 1.0
    return float(loss), dscores / B


def mean_squared_error(scores, targets):
    """(READ 2), (READ 3): (1/B) Σ (s − y)² and its gradient."""
    B = scores.shape[0]
    diff = scores - targets
    return float(np.sum(diff * diff) / B), 2.0 * diff / B


def readout_backward(dscores, hT, W):
    """(READ 4): dW (H, K), dc (K,), dhT (B, H)."""
    return hT.T @ dscores, dscores.sum(axis=0), dscores @ W.T


class Readout:
    """W ~ N(0, 1/H), c = 0; `params` = {"W", "c"} (names the optimizer updates in place)."""

    def __init__(self, hidden_size, n_outputs, kind, rng, dtype="float64"):
        if kind not in ("classification", "regression"):
            raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")
        self.kind = kind
        self.params = {
            "W": (rng.standard_normal((hidden_size, n_outputs)) / np.sqrt(hidden_size)
                  ).astype(dtype),
            "c": np.zeros(n_outputs, dtype=dtype)}

    def loss(self, hT, y):
        """(loss, scores) without gradients."""
        scores = readout_forward(hT, self.params["W"], self.params["c"])
        loss_fn = softmax_cross_entropy if self.kind == "classification" else mean_squared_error
        return loss_fn(scores, y)[0], scores

    def loss_and_grads(self, hT, y):
        """(loss, scores, {"W": dW, "c": dc}, dhT)."""
        W = self.params["W"]
        scores = readout_forward(hT, W, self.params["c"])
        loss_fn = softmax_cross_entropy if self.kind == "classification" else mean_squared_error
        loss, dscores = loss_fn(scores, y)
        dW, dc, dhT = readout_backward(dscores, hT, W)
        return loss, scores, {"W": dW, "c": dc}, dhT

    def metric(self, scores, y):
        """Accuracy (classification) or the MSE itself (regression), summed over rows, so that
        callers can average over a whole data set."""
        if self.kind == "classification":
            return float(np.sum(np.argmax(scores, axis=1) == y))
        return float(np.sum((scores - y) ** 2))
