"""Fine-tune a RegNet on scikit-learn's digits with Keras' model.fit and write a checkpoint that PyTorch and Flax load.

    python examples/finetune_keras.py --out digits-keras

The same recipe as examples/finetune_pt.py (digits_config, SGD with PyTorch's rule:
momentum 0.9, weight decay 5e-4 added to the gradient, cosine learning rate; the same
batches), through ``model.compile`` and ``model.fit`` with Keras' progress bar.
"""

from __future__ import annotations

import argparse
import time

import regnet_tf  # Keras on TensorFlow, before anything imports keras
from regnet_core.datasets import digits_id2label, digits_image_processor, load_digits_rgb
from regnet_core.training import SGDConfig, digits_config
from regnet_tf.training import evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="digits-keras", help="checkpoint directory to write")
    parser.add_argument("--from", dest="source", help="start from this checkpoint (a fresh 10-class head)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--size", type=int, default=32, help="image size the 8x8 digits are upsampled to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()

    started = time.perf_counter()
    import keras

    keras.utils.set_random_seed(args.seed)
    train = load_digits_rgb("train", args.size, seed=args.seed, data_format="channels_last")
    test = load_digits_rgb("test", args.size, seed=args.seed, data_format="channels_last")
    if args.source:
        model = regnet_tf.RegNetForImageClassification.from_pretrained(
            args.source, reinit_head=True, id2label=digits_id2label()
        )
    else:
        model = regnet_tf.RegNetForImageClassification(digits_config())
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
        f"Keras: held-out accuracy {accuracy:.4f} ({round(accuracy * len(test))}/{len(test)}) after {args.epochs} "
        f"epochs; fit {history.seconds:.1f} s, total {time.perf_counter() - started:.1f} s; checkpoint {args.out}"
    )


if __name__ == "__main__":
    main()
