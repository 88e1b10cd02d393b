"""Fine-tune a RegNet on scikit-learn's digits in PyTorch and write a checkpoint that Keras and Flax load.

    python examples/finetune_pt.py --out digits-pt

Trains the small RegNetY of ``regnet_core.training.digits_config`` from scratch (or, with
``--from CKPT``, any checkpoint with a fresh 10-class head) with SGD (momentum 0.9, weight
decay 5e-4, cosine learning rate) on 1438 digits upsampled to 32x32, prints the held-out
accuracy (359 digits) and the wall time, and saves the model with ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import time

import torch

from regnet_core.datasets import digits_id2label, digits_image_processor, load_digits_rgb
from regnet_core.training import SGDConfig, digits_config
from regnet_pt import RegNetForImageClassification
from regnet_pt.training import evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="digits-pt", help="checkpoint directory to write")
    parser.add_argument("--from", dest="source", help="start from this checkpoint (a fresh 10-class head)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--size", type=int, default=32, help="image size the 8x8 digits are upsampled to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: this model is tiny, and on a busy 2-core machine a second "
        "thread spun and made each step 20x to 40x slower; 0 keeps PyTorch's choice)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = load_digits_rgb("train", args.size, seed=args.seed)
    test = load_digits_rgb("test", args.size, seed=args.seed)
    if args.source:
        model = RegNetForImageClassification.from_pretrained(args.source, reinit_head=True, id2label=digits_id2label())
    else:
        model = RegNetForImageClassification(digits_config())
    sgd = SGDConfig(args.lr, 0.9, args.weight_decay)
    history = fit(
        model,
        train,
        test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        sgd=sgd,
        seed=args.seed,
        progress=not args.quiet,
    )
    _, accuracy = evaluate(model, test)
    model.save_pretrained(args.out)
    # how to prepare a new digit image as training did (not the ImageNet default save_pretrained writes)
    digits_image_processor(args.size, seed=args.seed).save_pretrained(args.out)
    print(
        f"PyTorch: held-out accuracy {accuracy:.4f} ({round(accuracy * len(test))}/{len(test)}) after {args.epochs} "
        f"epochs; fit {history.seconds:.1f} s, total {time.perf_counter() - started:.1f} s; "
        f"{torch.get_num_threads()} thread(s); checkpoint {args.out}"
    )


if __name__ == "__main__":
    main()
