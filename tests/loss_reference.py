"""Independent NumPy (float64, linear-space) reference of the losses in docs/algorithm.md.

Each surrogate loss is linear in the Gram matrix S = V V^T of the stacked unit vectors V once
the weights p are fixed: L = sum_rc W[r, c] S[r, c] / B, so dL/dV = (W + W^T) V / B. The
helpers build W anchor by anchor straight from docs/algorithm.md's formulas, then chain the gradient
through the L2 normalisation.
"""

import numpy as np


def random_views(rng, batch, dim=5):
    """Two float64 [batch, dim] normal draws: the projections of two views."""
    return rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))


def normalize(z):
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def grad_through_normalize(z, grad_n):
    """dL/dz for n = z / |z|, given dL/dn."""
    n = normalize(z)
    radial = np.sum(grad_n * n, axis=1, keepdims=True)
    return (grad_n - radial * n) / np.linalg.norm(z, axis=1, keepdims=True)


def _global_contrastive(V, anchors, u_old, gamma, tau, batch):
    """anchors: list of (row, positive column, negative columns, table key)."""
    S = V @ V.T
    W = np.zeros_like(S)
    loss, objective = 0.0, 0.0
    u_new = {}
    for row, pos, neg, key in anchors:
        e = np.exp(S[row, neg] / tau)
        g = e.mean()
        old = u_old[key]
        u = g if np.isnan(old) else (1.0 - gamma) * old + gamma * g
        W[row, pos] -= 1.0
        W[row, neg] += e / u / len(neg)
        loss += -S[row, pos] + np.sum(e / u * S[row, neg]) / len(neg)
        objective += tau * np.log(u) - S[row, pos]
        u_new[row] = u
    grad_V = (W + W.T) @ V / batch
    return loss / batch, objective / batch, grad_V, u_new


def sogclr_step(z1, z2, index, table, gamma, tau):
    """One unimodal SogCLR step. `table`: float64 `[N]`, NaN where never visited (updated in place).

    Returns loss, objective estimate, dL/dz1, dL/dz2.
    """
    a, b = normalize(z1), normalize(z2)
    B = len(a)
    V = np.concatenate([a, b])
    anchors = []
    for r in range(2 * B):
        i, partner = r % B, (r + B) % (2 * B)
        neg = [c for c in range(2 * B) if c not in (r, partner)]
        anchors.append((r, partner, neg, index[i]))
    loss, objective, grad_V, u = _global_contrastive(V, anchors, table, gamma, tau, B)
    write_mean(table, index, [(u[i] + u[B + i]) / 2.0 for i in range(B)])
    return (loss, objective, grad_through_normalize(z1, grad_V[:B]),
            grad_through_normalize(z2, grad_V[B:]))


def bimodal_step(image, text, index, image_table, text_table, gamma, tau):
    """One bimodal step (docs/algorithm.md, "Image-text"); tables updated in place.

    Returns loss, grads."""
    e, t = normalize(image), normalize(text)
    B = len(e)
    V = np.concatenate([e, t])
    image_anchors = [(i, B + i, [B + j for j in range(B) if j != i], index[i]) for i in range(B)]
    text_anchors = [(B + i, i, [j for j in range(B) if j != i], index[i]) for i in range(B)]
    loss_i, _, grad_i, u_i = _global_contrastive(V, image_anchors, image_table, gamma, tau, B)
    loss_t, _, grad_t, u_t = _global_contrastive(V, text_anchors, text_table, gamma, tau, B)
    write_mean(image_table, index, [u_i[i] for i in range(B)])
    write_mean(text_table, index, [u_t[B + i] for i in range(B)])
    grad_V = grad_i + grad_t
    return (loss_i + loss_t, grad_through_normalize(image, grad_V[:B]),
            grad_through_normalize(text, grad_V[B:]))


def write_mean(table, index, values):
    """Rows that appear several times in a batch store the mean of their values."""
    sums, counts = {}, {}
    for i, v in zip(index, values):
        sums[i] = sums.get(i, 0.0) + v
        counts[i] = counts.get(i, 0) + 1
    for i in sums:
        table[i] = sums[i] / counts[i]


def nt_xent(z1, z2, tau):
    """SimCLR NT-Xent, both directions. Returns loss, dL/dz1, dL/dz2."""
    a, b = normalize(z1), normalize(z2)
    B = len(a)
    V = np.concatenate([a, b])
    S = V @ V.T
    W = np.zeros_like(S)
    loss = 0.0
    for r in range(2 * B):
        partner = (r + B) % (2 * B)
        candidates = [c for c in range(2 * B) if c != r]
        logits = S[r, candidates] / tau
        softmax = np.exp(logits - logits.max())
        softmax /= softmax.sum()
        loss += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - S[r, partner] / tau
        W[r, candidates] += softmax / tau
        W[r, partner] -= 1.0 / tau
    grad_V = (W + W.T) @ V / B
    return loss / B, grad_through_normalize(z1, grad_V[:B]), grad_through_normalize(z2, grad_V[B:])


def decoupled_contrastive_loss(z1, z2, tau):
    """Batch-only decoupled contrastive loss (tau log mean exp over negatives - positive)."""
    a, b = normalize(z1), normalize(z2)
    B = len(a)
    V = np.concatenate([a, b])
    S = V @ V.T
    total = 0.0
    for r in range(2 * B):
        partner = (r + B) % (2 * B)
        neg = [c for c in range(2 * B) if c not in (r, partner)]
        total += tau * np.log(np.mean(np.exp(S[r, neg] / tau))) - S[r, partner]
    return total / B
