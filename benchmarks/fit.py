"""One ``fit`` end to end on the packaged digits: what ``backprop train`` does, against the same in PyTorch.

MLP 64-256-128-10, ReLU, Adam 1e-3, mini-batches of 32, 30 epochs (``epochs``), 10% validation evaluated every
epoch.
"""

from __future__ import annotations

import backprop as bp

from . import torch_peer
from .timing import interleaved

EPOCHS, BATCH = 30, 32


def run(backends, *, repeats, epochs=EPOCHS, include_torch=True, log=print):
    data = bp.data.load_digits()
    runs = {}
    for backend in backends:
        def ours(backend=backend):
            model = bp.mlp([64, 256, 128, 10], seed=0, backend=backend)
            bp.fit(model, data.x_train, data.y_train, optimizer="adam", epochs=epochs, batch_size=BATCH,
                   validation_split=0.1, progress=False, log=None)
            backend.synchronize()

        runs[f"backprop[{backend.name}]"] = ours
    torch = torch_peer.optional_torch(include_torch)
    if torch is not None:
        def torch_fit():
            torch.manual_seed(0)
            x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
            order = torch.randperm(len(x))
            n_val = round(0.1 * len(x))
            xv, yv, xt, yt = x[order[:n_val]], y[order[:n_val]], x[order[n_val:]], y[order[n_val:]]
            model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                        torch.nn.ReLU(), torch.nn.Linear(128, 10))
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            loss_fn = torch.nn.CrossEntropyLoss()
            for _ in range(epochs):
                perm = torch.randperm(len(xt))
                for start in range(0, len(xt), BATCH):
                    index = perm[start:start + BATCH]
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(xt[index]), yt[index])
                    loss.backward()
                    optimizer.step()
                with torch.no_grad():
                    float(loss_fn(model(xv), yv))

        runs["pytorch[cpu]"] = torch_fit
    log(f"fit on digits: {len(runs)} contenders, {repeats} rounds")
    timed = interleaved(runs, repeats=repeats)
    results = []
    for name, t in timed.items():
        results.append({"workload": f"fit digits MLP 64-256-128-10, {epochs} epochs", "batch_size": BATCH,
                        "contender": name, "seconds_per_epoch": t["median"] / epochs, "extrapolated": False,
                        "samples_timed": len(data.x_train), "runs": t["runs"]})
        log(f"  {name:<28} {t['median']:8.3f} s per fit")
    return results
