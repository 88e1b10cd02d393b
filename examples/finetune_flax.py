"""Fine-tune a RegNet on scikit-learn's digits in Flax with optax and write a checkpoint that PyTorch and Keras load.

    python examples/finetune_flax.py --out digits-flax

The same recipe as examples/finetune_pt.py (digits_config, SGD with PyTorch's rule:
momentum 0.9, weight decay 5e-4 added to the gradient, cosine learning rate; the same
batches), as a jitted step on a TrainState that carries params, batch_stats and the optax state.
"""

from __future__ import annotations

import argparse
import time

import regnet_flax
from regnet_core.datasets import digits_id2label, digits_image_processor, load_digits_rgb
from regnet_core.training import SGDConfig, digits_config
from regnet_flax.training import evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="digits-flax", help="checkpoint directory to write")
    parser.add_argument("--from", dest="source", help="start from this checkpoint (a fresh 10-class head)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--size", type=int, default=32, help="image size the 8x8 digits are upsampled to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()

    started = time.perf_counter()
    train = load_digits_rgb("train", args.size, seed=args.seed, data_format="channels_last")
    test = load_digits_rgb("test", args.size, seed=args.seed, data_format="channels_last")
    if args.source:
        module, variables = regnet_flax.from_pretrained(
            args.source, reinit_head=True, seed=args.seed, id2label=digits_id2label()
        )
    else:
        module, variables = regnet_flax.init(digits_config(), seed=args.seed)
    sgd = SGDConfig(args.lr, 0.9, args.weight_decay)
    variables, history = fit(
        module,
        variables,
        train,
        test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        sgd=sgd,
        seed=args.seed,
        progress=not args.quiet,
    )
    _, accuracy = evaluate(module, variables, test)
    regnet_flax.save_pretrained(module, variables, args.out)
    # how to prepare a new digit image as training did (not the ImageNet default save_pretrained writes)
    digits_image_processor(args.size, seed=args.seed).save_pretrained(args.out)
    print(
        f"Flax: held-out accuracy {accuracy:.4f} ({round(accuracy * len(test))}/{len(test)}) after {args.epochs} "
        f"epochs; fit {history.seconds:.1f} s, total {time.perf_counter() - started:.1f} s; checkpoint {args.out}"
    )


if __name__ == "__main__":
    main()
