"""Run by test_distributed.py, once plainly and once under torchrun with two processes.

Trains a linear model on a fixed regression problem with the shared Trainer. Rank r of W
takes rows r, r+W, ... of every batch, so the average of the ranks' gradients is exactly the
full batch's gradient: both runs must end with the same weights. Each rank writes its own.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from genlab.training.loop import Trainer, TrainConfig

out = Path(sys.argv[1])
torch.manual_seed(0)
x, w_true = torch.randn(32, 4), torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
y = x @ w_true
model = torch.nn.Linear(4, 1)
trainer = Trainer(model, TrainConfig(steps=30, batch_size=32, lr=0.3, warmup=1, ema_decay=0.0))


def loss(model, generator):
    rows = slice(trainer.rank, None, trainer.world)  # this rank's share of the batch
    return torch.nn.functional.mse_loss(model(x[rows]), y[rows])


losses = [s.loss for s in trainer.run(loss)]
out.mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous() for k, v in model.state_dict().items()} | {"losses": torch.tensor(losses)},
          str(out / f"rank{trainer.rank}-of-{trainer.world}.safetensors"))
