"""The floor for our overhead: the same MLP training loop written by hand in NumPy (or CuPy), no abstraction.

ReLU MLP, softmax cross-entropy, plain SGD, shuffled mini-batches; exactly the work the library does,
with no input gradient for the first layer (nothing needs it).
"""

from __future__ import annotations


def init_params(xp, sizes, rng_seed=0):
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / n_in)
        params.append(xp.asarray(rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32)))
        params.append(xp.zeros(n_out, dtype=xp.float32))
    return params


def train_epoch(xp, params, x, y, batch_size, lr, rng):
    n = x.shape[0]
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        xb, yb = x[index], y[index]
        # forward
        activations, pre = [xb], []
        h = xb
        for i in range(0, len(params) - 2, 2):
            z = h @ params[i] + params[i + 1]
            pre.append(z)
            h = xp.maximum(z, 0)
            activations.append(h)
        logits = h @ params[-2] + params[-1]
        logits -= logits.max(axis=1, keepdims=True)
        probs = xp.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        rows = xp.arange(len(yb))
        loss = -xp.log(probs[rows, yb] + 1e-12).mean()
        # backward
        grad = probs
        grad[rows, yb] -= 1
        grad /= len(yb)
        for i in range(len(params) - 2, -1, -2):
            a = activations[i // 2]
            grad_w, grad_b = a.T @ grad, grad.sum(axis=0)
            if i > 0:
                grad = grad @ params[i].T
                grad *= pre[i // 2 - 1] > 0
            params[i] -= lr * grad_w
            params[i + 1] -= lr * grad_b
    return float(loss)
