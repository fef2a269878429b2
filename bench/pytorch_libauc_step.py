"""The reference train step: PyTorch with the authors' LibAUC SogCLR loss, same shape as ours.

Runs under an interpreter that has PyTorch and LibAUC, which are not dependencies of this
project (a scratch environment, bench/README.md):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 libauc==2.0.1
    /tmp/torchvenv/bin/python bench/pytorch_libauc_step.py [--steps 40 --batch 128 --profile]

The model is the one `train_bench.py --case=train` trains: ResNet-18 v1 of width 0.25 with
the small-image stem (3x3 convolution, no max-pool), a projection shortcut only where the
stride or the channel count changes, SimCLR's 2-layer projection head to 128 with batch norm,
both views of a batch of 32x32x3 images in one pass, `libauc.losses.GCLoss_v1` (SogCLR, the
u-table of N rows), SGD with momentum 0.9 and weight decay. It is written here because
torchvision's ResNet has no width multiplier or small-image stem. Prints one JSON object:
examples/s and CPU-seconds per example over the timed steps (`--profile`: also the
self-CPU time per step of the heaviest operators, from `torch.profiler`).
"""

import argparse
import json
import time

import torch
from libauc.losses import GCLoss_v1
from torch import nn

GROUP_FILTERS = (64, 128, 256, 512)


def _conv_bn(in_channels, out_channels, kernel, stride):
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1)]


class BasicBlock(nn.Module):
    """ResNet v1 basic block: two 3x3 convolutions, projection shortcut when shapes change."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.residual = nn.Sequential(*_conv_bn(in_channels, out_channels, 3, stride),
                                      nn.ReLU(inplace=True),
                                      *_conv_bn(out_channels, out_channels, 3, 1))
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))

    def forward(self, x):
        return torch.relu(self.residual(x) + self.shortcut(x))


class ResNet18(nn.Module):
    """Images `[b, 3, H, W]` -> pooled features `[b, round(512 * width)]`."""

    def __init__(self, width):
        super().__init__()
        channels = [round(f * width) for f in GROUP_FILTERS]
        layers = [*_conv_bn(3, channels[0], 3, 1), nn.ReLU(inplace=True)]
        in_channels = channels[0]
        for group, out_channels in enumerate(channels):
            for block in range(2):
                stride = 2 if group > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = in_channels

    def forward(self, x):
        return self.body(x)


def projection_head(width, out_dim=128):
    """SimCLR's 2-layer head: dense + batch norm + ReLU, dense + batch norm (beta not trained)."""
    last_norm = nn.BatchNorm1d(out_dim)
    last_norm.bias.requires_grad_(False)
    return nn.Sequential(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, out_dim, bias=False), last_norm)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    encoder = ResNet18(args.width)
    head = projection_head(encoder.feature_dim)
    model = nn.Sequential(encoder, head)
    loss_fn = GCLoss_v1(N=50_000, tau=0.1, gamma=0.9, device=torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    view1, view2 = torch.rand(args.batch, 3, 32, 32), torch.rand(args.batch, 3, 32, 32)
    index = torch.arange(args.batch)

    def step():
        projections = model(torch.cat([view1, view2]))
        z1, z2 = projections.split(args.batch)
        loss = loss_fn(z1, z2, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(3):  # Warm-up: oneDNN primitives, allocator.
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        loss = step()
    float(loss)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {"framework": "pytorch+libauc", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "batch": args.batch, "width": args.width,
              "steps": args.steps, "examples_per_s": args.steps * args.batch / wall,
              "cpu_seconds_per_example": cpu / (args.steps * args.batch)}
    if args.profile:
        result["profile_ms_per_step"] = _profile(step, steps=5)
    print(json.dumps(result))


def _profile(step, steps):
    """Self-CPU milliseconds per step of the 25 heaviest operators (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    ops = {e.key: round(e.self_cpu_time_total / 1000 / steps, 2) for e in events[:25]}
    return {"total": round(total / 1000 / steps, 2), **ops}


if __name__ == "__main__":
    main()
