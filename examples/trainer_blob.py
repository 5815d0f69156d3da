"""A stock transformers.Trainer script for sequence classification that trains BLoB instead of a plain
fine-tune. The three bayespeft lines are marked; everything else is ordinary transformers code.

    python examples/trainer_blob.py --model bert-base-uncased --output-dir out/blob
"""

from __future__ import annotations

import argparse

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

import bayespeft

GOOD = ["a wonderful film", "great acting and a moving story", "I loved every minute", "superb and touching"]
BAD = ["a dull film", "poor acting and a boring story", "I hated every minute", "weak and tedious"]


def dataset(tokenizer, repeats: int) -> list[dict]:
    """A toy sentiment set: label 1 for praise, 0 for complaints."""
    texts, labels = (GOOD + BAD) * repeats, ([1] * len(GOOD) + [0] * len(BAD)) * repeats
    return [{**tokenizer(t, truncation=True, max_length=32), "labels": y} for t, y in zip(texts, labels, strict=True)]


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--method", default="blob")
    options = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(options.model)
    model = AutoModelForSequenceClassification.from_pretrained(options.model, num_labels=2)
    model = bayespeft.wrap(model, options.method, r=4, alpha=8)  # bayespeft 1/3
    args = TrainingArguments(
        output_dir=options.output_dir,
        max_steps=options.max_steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    trainer = bayespeft.BayesianTrainer(  # bayespeft 2/3 (was transformers.Trainer)
        model=model,
        args=args,
        train_dataset=dataset(tokenizer, 4),
        eval_dataset=dataset(tokenizer, 1),
        processing_class=tokenizer,
        compute_metrics=accuracy,
        eval_n_samples=4,
    )
    trainer.train()
    print(trainer.evaluate())
    model.save_pretrained(f"{options.output_dir}/adapter")  # bayespeft 3/3: the full Bayesian adapter
    return trainer


if __name__ == "__main__":
    main()
