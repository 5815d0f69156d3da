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

import argparse
import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compose import compose_config
from .config import apply_override, build_dataclass
from .data.generative import PROMPT_TEMPLATES, QAExample, is_generative_dataset, load_generative_dataset
from .errors import ConfigError
from .generation import GenerationConfig, check_generative, draw_plan, eos_token_ids, generate_samples
from .rundir import check_writable, path_flag
from .sample_store import (
    Generation,
    SampleStore,
    Shard,
    generation_fingerprint,
    merge,
    resolve_shard,
    run_sampling,
    salvage,
    shard_paths,
)

if TYPE_CHECKING:
    from .training import Session

__all__ = ["add_sample_parser", "generation_config", "producer", "run_sample", "run_sample_store", "store_fingerprint"]

_GENERATION_PREFIX = "generation."
_EXPORT_FORMATS = ("jsonl", "parquet")


def add_sample_parser(subparsers: Any) -> None:
    """Add the ``sample`` and ``sample-store`` sub-commands to ``subparsers`` (from ``add_subparsers``)."""
    from .cli import add_config_flags

    sample = subparsers.add_parser(
        "sample",
        help="generate S answers per example under the posterior into a resumable SQLite store",
        description="Sample generations of a trained run (--run-dir) or, zero-shot, of a config's model. "
        "Decoding: generation.<field>=value overrides (strategy greedy|beam|sample, n_samples, max_new_tokens, "
        "num_beams, temperature, top_k, top_p, seed, decoding_seed, posterior_mean, prompts_per_batch). "
        "Rerunning resumes; a store of another configuration is refused.",
    )
    sample.add_argument(
        "--run-dir", type=path_flag("--run-dir"), help="a finished training run (default: zero-shot from the config)"
    )
    sample.add_argument(
        "--store", type=path_flag("--store"), required=True, help="the SQLite store (.sqlite) to create or resume"
    )
    sample.add_argument("--split", default="test", help="dataset split to sample (default: %(default)s)")
    sample.add_argument("--max-examples", type=int, help="sample the first N examples (a larger N extends the store)")
    sample.add_argument(
        "--shard", help="I/N: this machine samples the examples with index I modulo N into its own shard file"
    )
    add_config_flags(sample)

    store = subparsers.add_parser(
        "sample-store", help="merge, export, salvage or inspect sample stores made by `bayespeft sample`"
    )
    store.set_defaults(overrides=[])
    actions = store.add_subparsers(dest="action", required=True)
    merging = actions.add_parser("merge", help="unite shard stores into one store (rerunning it is harmless)")
    merging.add_argument(
        "--store", type=path_flag("--store"), required=True, help="the merged store (and base name of its shards)"
    )
    sources = merging.add_mutually_exclusive_group(required=True)
    sources.add_argument("--shards", type=int, help="merge <store stem>.shard-I-of-N files, I = 0..N-1")
    sources.add_argument("--inputs", type=Path, nargs="+", help="merge these store files")
    export = actions.add_parser("export", help="write a store's samples as JSONL or Parquet")
    export.add_argument("--store", type=Path, required=True)
    export.add_argument("--out", type=path_flag("--out"), required=True, help="output file")
    export.add_argument("--format", choices=_EXPORT_FORMATS, help="default: from the --out suffix")
    rescue = actions.add_parser("salvage", help="copy the readable rows of a damaged store into a new store")
    rescue.add_argument("--store", type=Path, required=True, help="the damaged store (only read)")
    rescue.add_argument("--out", type=path_flag("--out"), required=True, help="the new store; resume sampling into it")
    info = actions.add_parser("info", help="print a store's configuration, shard and progress")
    info.add_argument("--store", type=Path, required=True)


def run_sample(args: argparse.Namespace) -> int:
    """Run ``bayespeft sample``: validate everything, then generate into this process's shard of the store."""
    from accelerate.utils import set_seed

    from .training import build_session

    if args.max_examples is not None and args.max_examples < 1:
        raise ConfigError(f"--max-examples: must be >= 1 (got {args.max_examples})")
    check_writable(args.store, "--store")
    if getattr(args, "eval.n_samples") is not None:
        raise ConfigError("--n-samples: sets eval.n_samples, which sampling does not read; use generation.n_samples=S")
    generation_items = [item for item in args.overrides if item.strip().startswith(_GENERATION_PREFIX)]
    args.overrides = [item for item in args.overrides if item not in generation_items]
    generation = generation_config(generation_items)
    if args.run_dir is not None:
        from .cli import run_config_of

        run, config = run_config_of(args)
    else:
        from .cli import cli_overrides

        run, config = None, compose_config(args.config, {}, cli_overrides(args))
    data = config.data
    if not is_generative_dataset(data.dataset):
        raise ConfigError(
            f"data.dataset: {data.dataset} is not an open-ended dataset; sample generates answers for "
            f"{', '.join(PROMPT_TEMPLATES)}"
        )
    examples = load_generative_dataset(
        data.dataset, args.split, data.data_dir, limit=args.max_examples, seed=config.train.seed
    )
    if not examples:
        raise ConfigError(f"--split: {data.dataset} split {args.split} has no examples")
    machine = Shard.parse(args.shard) if args.shard else Shard()

    set_seed(config.train.seed)  # a zero-shot adapter's initialisation is then the same in every run
    session = build_session(config)
    if run is not None:
        session.method.load_adapter(session.model, run.adapter)
    check_generative(session.method)
    accelerator, method = session.accelerator, session.method
    fingerprint = store_fingerprint(session, None if run is None else run.adapter, generation, examples, args.split)
    shard = resolve_shard(args.shard, accelerator.process_index, accelerator.num_processes)
    with SampleStore.open(shard.path_for(args.store), fingerprint, shard) as store:
        summary = run_sampling(
            store,
            examples,
            producer(session, generation, examples),
            batch_size=generation.prompts_per_batch,
            progress=not args.quiet and accelerator.is_main_process,
        )
        rows = store.count()
    target = machine.path_for(args.store)
    if accelerator.num_processes > 1:  # the machine's processes' shards become the machine's store
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            first = machine.index * accelerator.num_processes
            parts = [Shard(first + p, shard.count).path_for(args.store) for p in range(accelerator.num_processes)]
            rows = merge(parts, target)
    if accelerator.is_main_process:
        print(
            f"{method.name} on {examples[0].dataset} {args.split}: {summary.examples} examples in shard {shard} "
            f"({summary.already_complete} already complete, {summary.completed} sampled), "
            f"{fingerprint['samples_per_example']} samples each; {rows} samples -> {target}"
        )
        if machine.count > 1:
            print(
                f"once every shard has run: bayespeft sample-store merge --store {args.store} --shards {machine.count}"
            )
    return 0


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


def run_sample_store(args: argparse.Namespace) -> int:
    """Run ``bayespeft sample-store merge|export|salvage|info``."""
    if args.overrides:
        raise ConfigError(f"sample-store {args.action}: unexpected argument {args.overrides[0]!r}")
    if args.action == "merge":
        if args.shards is not None and args.shards < 1:
            raise ConfigError(f"--shards: must be >= 1 (got {args.shards})")
        check_writable(args.store, "--store")
        inputs = shard_paths(args.store, args.shards) if args.shards is not None else args.inputs
        rows = merge(inputs, args.store)
        print(f"merged {len(inputs)} stores: {rows} samples -> {args.store}")
    elif args.action == "export":
        kind = args.format or args.out.suffix.lstrip(".").lower()
        if kind not in _EXPORT_FORMATS:
            raise ConfigError(f"--out {args.out}: cannot tell the format from its suffix; pass --format jsonl|parquet")
        check_writable(args.out, "--out")
        with SampleStore.open_existing(args.store) as store:
            rows = store.export_jsonl(args.out) if kind == "jsonl" else store.export_parquet(args.out)
        print(f"exported {rows} samples -> {args.out}")
    elif args.action == "salvage":
        check_writable(args.out, "--out")
        result = salvage(args.store, args.out)
        print(
            f"salvaged {result.recovered} samples ({result.lost} unreadable) -> {args.out}; "
            "rerun bayespeft sample with --store on it to regenerate the lost ones"
        )
    else:
        with SampleStore.open_existing(args.store) as store:
            print(
                f"{args.store}: shard {store.shard}, {store.count()} samples, "
                f"{len(store.complete_examples())} complete examples, {len(store.partial_examples())} partial"
            )
            for key, value in sorted(store.fingerprint.items()):
                print(f"  {key}: {value}")
    return 0
