"""The reference trainer on the convergence probe's images: loss and training accuracy per window of steps.

    python benchmarks/probe_convergence.py --dump_npz /tmp/probe/train112.npz      # our decode, once (TensorFlow venv)
    python benchmarks/reference_probe_torch.py --arcface_torch insightface/recognition/arcface_torch \
        --npz /tmp/probe/train112.npz --out benchmarks/results/convergence_reference.json   # a venv with torch

Not a dependency of this project and not run by its tests: it needs PyTorch and a checkout of insightface's
``recognition/arcface_torch``, whose own pieces it imports and runs unchanged (``get_model``, ``CombinedMarginLoss``,
``PartialFC_V2``, its SGD with weight decay on every parameter and ``clip_grad_norm_(backbone, 5)``), so the
comparison with probe_convergence.py differs only in the trainer: the same decoded faces (our centre crop, 112 px),
the same order-free sampling (a fresh permutation per epoch), warm-up and constant rate. Its augmentation is the
reference's: a horizontal flip. Training accuracy is counted as ours is: by cosine, before the step's update.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arcface_torch", required=True, help="insightface's recognition/arcface_torch folder")
    parser.add_argument("--npz", required=True, help="written by probe_convergence.py --dump_npz")
    parser.add_argument("--network", default="mbf")
    parser.add_argument("--steps", type=int, default=125)
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument("--warmup_steps", type=int, default=36)
    parser.add_argument("--scale", type=float, default=64.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    import torch
    from torch import distributed

    torch.set_num_threads(args.threads)
    # The reference moves every tensor to a GPU with .cuda(); here they stay where they are.
    torch.Tensor.cuda = lambda self, *_, **__: self
    sys.path.insert(0, os.path.abspath(args.arcface_torch))
    from backbones import get_model
    from losses import CombinedMarginLoss
    from partial_fc_v2 import PartialFC_V2

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    distributed.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = np.load(args.npz)
    images, labels = data["x"], data["y"]
    classes = int(labels.max()) + 1
    backbone = get_model(args.network, num_features=512).train()
    head = PartialFC_V2(CombinedMarginLoss(args.scale, 1.0, 0.5, 0.0), 512, classes, 1.0, False).train()
    optimizer = torch.optim.SGD([{"params": backbone.parameters()}, {"params": head.parameters()}], lr=args.lr,
                                momentum=0.9, weight_decay=5e-4)
    load = [round(x, 2) for x in os.getloadavg()]
    order, position = rng.permutation(len(labels)), 0
    history, loss_sum, correct, seen, started = {}, 0.0, 0, 0, time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps else args.lr
        if position + args.batch_size > len(order):
            order, position = rng.permutation(len(labels)), 0
        batch = order[position:position + args.batch_size]
        position += args.batch_size
        x = images[batch].astype(np.float32)
        flip = rng.random(len(batch)) < 0.5
        x[flip] = x[flip, :, ::-1]
        x = torch.from_numpy(((x - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())
        y = torch.from_numpy(labels[batch])
        embeddings = backbone(x)
        with torch.no_grad():
            cosines = torch.nn.functional.normalize(embeddings) @ torch.nn.functional.normalize(head.weight).T
            correct += int((cosines.argmax(1) == y).sum())
        loss = head(embeddings, y.clone())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
        optimizer.step()
        loss_sum += float(loss.detach())
        seen += len(batch)
        if (step + 1) % args.window == 0:
            history[str(step + 1)] = {"loss": round(loss_sum / args.window, 3), "accuracy": round(correct / seen, 4),
                                      "images_per_second": round(seen / (time.time() - started), 1)}
            print(step + 1, history[str(step + 1)], file=sys.stderr, flush=True)
            loss_sum, correct, seen, started = 0.0, 0, 0, time.time()
    result = {"benchmark": "convergence_reference", "trainer": f"insightface arcface_torch {args.network}",
              "torch": torch.__version__, "scale": args.scale, "penalty": 0.5, "classes": classes,
              "images": len(labels), "steps": args.steps, "window": args.window, "warmup_steps": args.warmup_steps,
              "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "augmentation": "horizontal flip",
              "load_average_at_start": load, "by_step": history}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
