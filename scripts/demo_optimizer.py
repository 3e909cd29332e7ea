"""Ten-second demonstration: softmax regression on scikit-learn's digits with four optimizers."""

import torch
from sklearn.datasets import load_digits

from adarem import AdaRem

X, y = load_digits(return_X_y=True)
X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
for name, make in {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01),
    "adarem": lambda p: AdaRem(p, lr=0.5),
}.items():
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    opt = make(model.parameters())
    for _ in range(100):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
    err = float((model(X).argmax(1) != y).float().mean())
    print(f"{name:7s} train loss {loss.item():.4f}  train error {100 * err:.2f}%")
