"""The same MLP in PyTorch eager mode: nn.Linear/ReLU, CrossEntropyLoss, optim.SGD."""

from __future__ import annotations


def optional_torch(include: bool = True):
    """The torch module when it is wanted and installed, else None: the benchmarks run without PyTorch."""
    if not include:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_devices(torch) -> list[str]:
    """The devices PyTorch can race on here: the CPU, and the GPU when there is one."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def build(sizes, device, seed=0):
    import torch

    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device)


def train_epoch(model, optimizer, x, y, batch_size, generator):
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    order = torch.randperm(x.shape[0], generator=generator, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        index = order[start:start + batch_size]
        xb, yb = x.index_select(0, index), y.index_select(0, index)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
    return float(loss.detach())
