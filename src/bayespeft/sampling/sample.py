"""``bayespeft sample``: S generations per example under the posterior, into a resumable SQLite store.

The model is a finished run's (``--run-dir``: its config and trained adapter) or, zero-shot, the
one a config describes (``-c`` and the usual flags: the adapter as the method initialises it,
seeded by ``train.seed``; e.g. ``--method noise`` perturbs the pretrained weights). Decoding is
set by ``generation.<field>=value`` overrides (:class:`~bayespeft.generation.GenerationConfig`).

Every example is decoded from the prompt the task trains on (:meth:`GenerativeTask.prompt_text`),
with its dataset index as the key of its sampling noise, so shards and resumed runs write the
same samples as one uninterrupted run. The store is tied to a fingerprint of everything that
changes the samples (model, adapter weights, method settings, LoRA shape, dataset, split, data
seed, prompt template, decoding); a store of another configuration is refused. The example limit
(``--max-examples``) is not part of it: a larger limit extends the same store.

Under ``accelerate launch`` every process samples its own shard file and the main process merges
them into the machine's store after all have finished. ``bayespeft sample-store`` merges the
shards of several machines, exports to JSONL or Parquet, salvages a damaged store and shows a
store's configuration and progress.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..compose import apply_override
from ..config import build_dataclass, load_config
from ..data.generative import PROMPT_TEMPLATES, QAExample, is_generative_dataset, load_generative_dataset
from ..errors import ConfigError
from ..generation import GenerationConfig, check_generative, draw_plan, eos_token_ids, generate_samples
from ..rundir import check_writable
from ..sample_store import (
    Generation,
    SampleStore,
    Shard,
    generation_fingerprint,
    merge,
    resolve_shard,
    run_sampling,
)

if TYPE_CHECKING:
    from ..training import Session

__all__ = ["generation_config", "producer", "sample", "store_fingerprint"]

_GENERATION_PREFIX = "generation."


def sample(
    store: str | Path,
    *,
    run_dir: str | Path | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    split: str = "test",
    max_examples: int | None = None,
    shard: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate S answers per example into a resumable SQLite store, as ``bayespeft sample`` does.

    The model is the finished run in ``run_dir`` or, zero-shot, the one ``config`` and
    ``overrides`` compose; ``generation.<field>=value`` overrides set the decoding. ``shard``
    (``I/N``) samples every N-th example into its own shard file. Returns what was sampled
    (``main_process`` says whether this process reports it under ``accelerate launch``).
    """
    from accelerate.utils import set_seed

    from ..runs import load_trained_run
    from ..training import build_session

    store = Path(store)
    if max_examples is not None and max_examples < 1:
        raise ConfigError(f"--max-examples: must be >= 1 (got {max_examples})")
    check_writable(store, "--store")
    generation_items = [item for item in overrides if item.strip().startswith(_GENERATION_PREFIX)]
    generation = generation_config(generation_items)
    rest = [item for item in overrides if item not in generation_items]
    if run_dir is not None:
        run, run_config = load_trained_run(run_dir, rest)
        if config is not None:
            raise ConfigError("--config: sample uses the run's own config.yaml; change it with overrides")
    else:
        run, run_config = None, load_config(config, rest)
    data = run_config.data
    if not is_generative_dataset(data.dataset):
        raise ConfigError(
            f"data.dataset: {data.dataset} is not an open-ended dataset; sample generates answers for "
            f"{', '.join(PROMPT_TEMPLATES)}"
        )
    examples = load_generative_dataset(
        data.dataset, split, data.data_dir, limit=max_examples, seed=run_config.train.seed
    )
    if not examples:
        raise ConfigError(f"--split: {data.dataset} split {split} has no examples")
    machine = Shard.parse(shard) if shard else Shard()

    set_seed(run_config.train.seed)  # a zero-shot adapter's initialisation is then the same in every run
    session = build_session(run_config)
    if run is not None:
        session.method.load_adapter(session.model, run.adapter)
    check_generative(session.method)
    accelerator, method = session.accelerator, session.method
    fingerprint = store_fingerprint(session, None if run is None else run.adapter, generation, examples, split)
    mine = resolve_shard(shard, accelerator.process_index, accelerator.num_processes)
    with SampleStore.open(mine.path_for(store), fingerprint, mine) as opened:
        summary = run_sampling(
            opened,
            examples,
            producer(session, generation, examples),
            batch_size=generation.prompts_per_batch,
            progress=progress and accelerator.is_main_process,
        )
        rows = opened.count()
    target = machine.path_for(store)
    if accelerator.num_processes > 1:  # the machine's processes' shards become the machine's store
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            first = machine.index * accelerator.num_processes
            parts = [Shard(first + p, mine.count).path_for(store) for p in range(accelerator.num_processes)]
            rows = merge(parts, target)
    return {
        "method": method.name,
        "dataset": examples[0].dataset,
        "split": split,
        "shard": str(mine),
        "examples": summary.examples,
        "already_complete": summary.already_complete,
        "completed": summary.completed,
        "samples_per_example": fingerprint["samples_per_example"],
        "rows": rows,
        "store": str(target),
        "machines": machine.count,
        "main_process": accelerator.is_main_process,
    }


def store_fingerprint(
    session: Session, adapter: Path | None, generation: GenerationConfig, examples: list[QAExample], split: str
) -> dict[str, Any]:
    """Everything that changes the samples: the store refuses any other configuration.

    A zero-shot adapter (``adapter`` None) is fingerprinted by the weights the method initialised.
    """
    config, method = session.config, session.method
    dataset = examples[0].dataset
    with tempfile.TemporaryDirectory() as scratch:
        if adapter is None:
            adapter = method.save_adapter(session.model, Path(scratch) / "initial_adapter")
        return generation_fingerprint(
            model=config.model.name,
            adapter=adapter,
            method=method.name,
            seed=generation.seed,
            samples_per_example=draw_plan(method, generation).sequences,
            dataset=dataset,
            split=split,
            decoding={k: v for k, v in dataclasses.asdict(generation).items() if k != "prompts_per_batch"},
            extra={
                "method_config": dataclasses.asdict(config.method),
                "lora": dataclasses.asdict(config.model.lora),
                "precision": config.model.precision,
                "revision": config.model.revision,
                "prompt_template": PROMPT_TEMPLATES[dataset],
                "chat_template": session.task.chat_template,
                "data_seed": config.train.seed,
                "data_source": "hub" if config.data.data_dir is None else "local",
            },
        )


def producer(
    session: Session, generation: GenerationConfig, examples: list[QAExample]
) -> Callable[[list[QAExample]], list[Generation]]:
    """The ``produce_rows`` of :func:`run_sampling`: every sample of a batch, noise keyed by dataset index."""
    model, method, task = session.model, session.method, session.task
    index_of = {example.uid: index for index, example in enumerate(examples)}
    end_ids = set(eos_token_ids(model, task.tokenizer))

    def produce(batch: list[QAExample]) -> list[Generation]:
        prompts = [task.prompt_text(example.prompt) for example in batch]
        keys = [index_of[example.uid] for example in batch]
        sequences = generate_samples(model, task.tokenizer, method, prompts, generation, prompt_keys=keys)
        return [
            Generation(
                example_uid=example.uid,
                sample_index=sequence.sample_index,
                prompt=prompt,
                text=sequence.text,
                token_ids=sequence.token_ids,
                log_likelihood=sequence.log_likelihood,
                token_logprobs=sequence.token_log_probs,
                finish_reason="eos" if sequence.token_ids and sequence.token_ids[-1] in end_ids else "length",
            )
            for example, prompt, per_prompt in zip(batch, prompts, sequences, strict=True)
            for sequence in per_prompt
        ]

    return produce


def generation_config(items: list[str]) -> GenerationConfig:
    """A validated :class:`GenerationConfig` from ``generation.<field>=value`` overrides (values parsed as YAML)."""
    raw: dict[str, Any] = {}
    for item in items:
        apply_override(raw, item)
    config = build_dataclass(GenerationConfig, raw.get("generation") or {}, _GENERATION_PREFIX, "overrides")
    config.validate()
    return config
