"""The reference trainer on the convergence probe's images: loss and training accuracy per window of steps.

    python benchmarks/probe_convergence.py --dump_npz /tmp/probe/train112.npz      # our decode, once (TensorFlow venv)
    python benchmarks/reference_probe_torch.py --arcface_torch insightface/recognition/arcface_torch \
        --npz /tmp/probe/train112.npz --out benchmarks/results/convergence_reference.json   # a venv with torch
    python benchmarks/reference_probe_torch.py --arcface_torch ... --speed r18,r50 --precision bfloat16

--speed times the reference's whole training step instead (see speed(); bench_train.py --against_reference runs
it in alternation with ours and prints the ratios).

Not a dependency of this project and not run by its tests: it needs PyTorch and a checkout of insightface's
``recognition/arcface_torch``, whose own pieces it imports and runs unchanged (``get_model``, ``CombinedMarginLoss``,
``PartialFC_V2``, its SGD with weight decay on every parameter and ``clip_grad_norm_(backbone, 5)``), so the
comparison with probe_convergence.py differs only in the trainer: the same decoded faces (our centre crop, 112 px),
the same order-free sampling (a fresh permutation per epoch), warm-up and constant rate. Its augmentation is the
reference's: a horizontal flip. Training accuracy is counted as ours is: by cosine, before the step's update.

With --epochs it trains as train_v2.py schedules a run instead (its PolynomialLRWarmup: linear warm-up, then
linear decay to zero at the end of the planned epochs; see polynomial_lr_warmup) and stops at --minutes. With
--embeddings_out it then embeds the test pairs' images of the npz (written by probe_convergence.py --dump_npz
--workdir <bench_quality workdir>) as its eval/verification.py does (the embedding of the image plus that of its
mirror image, normalized), for ``bench_quality.py --rescore NAME=EMBEDDINGS.npz`` to score on that split's pairs
(the README's rows against the reference on the same splits):

    python benchmarks/probe_convergence.py --workdir /tmp/q19_s42 --dump_npz /tmp/ref42.npz --variants ""
    python benchmarks/reference_probe_torch.py --arcface_torch ... --npz /tmp/ref42.npz --scale 32 --epochs 12 \
        --minutes 20 --warmup_fraction 0.05 --window 33 --seed 42 --embeddings_out /tmp/ref42_embeddings.npz
    python benchmarks/bench_quality.py --seed 42 --workdir /tmp/q19_s42 --variants "" \
        --rescore reference_s32=/tmp/ref42_embeddings.npz
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
    parser.add_argument("--npz", help="written by probe_convergence.py --dump_npz (the convergence probe)")
    parser.add_argument("--speed", metavar="NETWORKS", help="comma-separated get_model() names (r18,r50,mbf): time "
                                                            "whole steps on a synthetic batch instead")
    parser.add_argument("--precision", default="bfloat16", choices=("bfloat16", "float32"),
                        help="with --speed: the backbone under torch.autocast('cpu', bfloat16), or not")
    parser.add_argument("--classes", type=int, default=1000, help="with --speed")
    parser.add_argument("--backbone_only", action="store_true",
                        help="with --speed: time the backbone alone (forward, backward, its SGD update; no margin "
                             "head, no clip): issue #20 quotes the reference's backbone alone")
    parser.add_argument("--channels_last", action="store_true",
                        help="with --speed: the backbone and batch in channels-last memory format (one more line "
                             "for a CPU user; oneDNN's blocked bf16 convolutions want it)")
    parser.add_argument("--warmup", type=int, default=3, help="with --speed: untimed steps")
    parser.add_argument("--network", default="mbf")
    parser.add_argument("--steps", type=int, default=125)
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument("--warmup_steps", type=int, default=36)
    parser.add_argument("--scale", type=float, default=64.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=float, help="train a scheduled run of this many epochs instead of --steps")
    parser.add_argument("--warmup_fraction", type=float, help="with --epochs: warm-up steps as a fraction of the run")
    parser.add_argument("--minutes", type=float, help="stop after this many minutes of training")
    parser.add_argument("--embeddings_out", help="embed the npz's test_x images after training and write them here")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if not args.speed and not args.npz:
        parser.error("--npz is needed for the convergence probe (or --speed NETWORKS for the step time)")

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
    if args.speed:
        return speed(args, get_model, CombinedMarginLoss, PartialFC_V2)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = np.load(args.npz)
    images, labels = data["x"], data["y"]
    classes = int(labels.max()) + 1
    backbone = get_model(args.network, num_features=512).train()
    head = PartialFC_V2(CombinedMarginLoss(args.scale, 1.0, 0.5, 0.0), 512, classes, 1.0, False).train()
    optimizer = torch.optim.SGD([{"params": backbone.parameters()}, {"params": head.parameters()}], lr=args.lr,
                                momentum=0.9, weight_decay=5e-4)
    if args.epochs:
        args.steps = int(args.epochs * (len(labels) // args.batch_size))
        if args.warmup_fraction is not None:
            args.warmup_steps = round(args.warmup_fraction * args.steps)
    load = [round(x, 2) for x in os.getloadavg()]
    order, position = rng.permutation(len(labels)), 0
    history, loss_sum, correct, seen, started = {}, 0.0, 0, 0, time.time()
    run_started, steps_done, stopped = time.time(), 0, "completed"
    for step in range(args.steps):
        if args.minutes and time.time() - run_started > 60 * args.minutes:
            stopped = "budget"
            break
        for group in optimizer.param_groups:
            if args.epochs:
                group["lr"] = polynomial_lr_warmup(args.lr, step, args.warmup_steps, args.steps)
            else:
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
        steps_done += 1
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
    if args.epochs:
        minutes = (time.time() - run_started) / 60
        result.update(schedule="PolynomialLRWarmup, power 1", epochs_planned=args.epochs, steps_done=steps_done,
                      epochs_completed=round(steps_done * args.batch_size / len(labels), 2), stopped=stopped,
                      train_minutes=round(minutes, 2),
                      images_per_second=round(steps_done * args.batch_size / (60 * minutes), 1))
    if args.embeddings_out:
        result["embeddings"] = embed_test_images(backbone, data, args.embeddings_out)
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return 0


def polynomial_lr_warmup(base_lr: float, step: int, warmup: int, total: int) -> float:
    """The rate of the reference's lr_scheduler.PolynomialLRWarmup as train_v2.py builds it (power 1) at 0-based
    ``step``. Its class no longer constructs under today's torch (``verbose`` left LRScheduler), so this is its
    closed form, quirk included: the first step runs at the full rate, the warm-up starts at the second."""
    if step == 0:
        return base_lr
    if step <= warmup:
        return base_lr * step / warmup
    return base_lr * max(0.0, 1.0 - (min(total, step) - warmup) / (total - warmup))


def embed_test_images(backbone, data, out: str, batch_size: int = 64) -> str:
    """As the reference's eval/verification.py embeds: eval mode, the image's and its mirror's embeddings
    summed, then normalized. Written as {paths, embeddings} for bench_quality.py --rescore."""
    import torch

    if "test_x" not in data:
        raise SystemExit("--embeddings_out: the npz has no test_x; write it with probe_convergence.py --dump_npz "
                         "--workdir <a bench_quality workdir with pairs.txt>")
    backbone.eval()
    images, outputs = data["test_x"], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].astype(np.float32)
            both = np.concatenate([x, x[:, :, ::-1]])
            both = torch.from_numpy(((both - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())
            e = backbone(both).numpy()
            outputs.append(e[:len(x)] + e[len(x):])
    embeddings = np.concatenate(outputs)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    np.savez(out, paths=data["test_paths"], embeddings=embeddings)
    return out


def speed(args, get_model, CombinedMarginLoss, PartialFC_V2) -> int:
    """The reference's training step as its train_v2.py runs it, on one seeded synthetic batch: the backbone
    (under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with --precision bfloat16, the one line a CPU user
    adds), PartialFC_V2 with CombinedMarginLoss (s=64, m=0.5) in float32, backward, ``clip_grad_norm_(backbone,
    5)``, SGD with momentum 0.9 and weight decay 5e-4; with --backbone_only the backbone and its update alone,
    on the mean of its embeddings. Median over --steps steps after --warmup."""
    import contextlib
    import statistics

    import torch

    rng = np.random.default_rng(args.seed)
    x = torch.from_numpy(rng.uniform(-1, 1, (args.batch_size, 3, 112, 112)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, args.classes, args.batch_size))
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    result = {"benchmark": "train_reference", "trainer": "insightface arcface_torch", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "precision": args.precision, "batch_size": args.batch_size,
              "classes": args.classes, "backbone_only": args.backbone_only, "channels_last": args.channels_last,
              "load_average_at_start": os.getloadavg(), "networks": {}}
    for network in filter(None, args.speed.split(",")):
        torch.manual_seed(args.seed)
        backbone = get_model(network, num_features=512).train()
        if args.channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        head = PartialFC_V2(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), 512, args.classes, 1.0, False).train()
        groups = [{"params": backbone.parameters()}] + ([] if args.backbone_only else [{"params": head.parameters()}])
        optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4)
        times = []
        for step in range(args.warmup + args.steps):
            started = time.perf_counter()
            with (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bfloat16"
                  else contextlib.nullcontext()):
                embeddings = backbone(x)
            loss = embeddings.float().mean() if args.backbone_only else head(embeddings.float(), y.clone())
            optimizer.zero_grad()
            loss.backward()
            if not args.backbone_only:
                torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)
            optimizer.step()
            float(loss.detach())
            if step >= args.warmup:
                times.append(time.perf_counter() - started)
        median = statistics.median(times)
        result["networks"][network] = {"median_step_s": median, "images_per_second": args.batch_size / median,
                                       "min_step_s": min(times), "max_step_s": max(times), "steps_timed": len(times)}
        print(f"{network} {args.precision}: {args.batch_size / median:.1f} img/s", file=sys.stderr, flush=True)
    result["load_average_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
