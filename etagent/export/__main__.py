"""Command line for exports.

    python -m etagent.export verl --run-dir outputs/etagent/<run> --out data/et_rl.parquet
        # every RL stage's Pareto selection -> data/et_rl_stage<k>.parquet
    python -m etagent.export verl --run-dir <run> --stage 2 --out data/stage2.parquet
    python -m etagent.export verl --examples questions.jsonl --out data/all.parquet
        # every Example of a JSONL file (no selection)

The system message is etagent's configured prompt (``prompts.system``, else the configured
tools' grammar prompt) of the config composed with ``--override``s (e.g. ``--override
tools=with_calculator`` for a run with more tools), unless ``--system-prompt-file`` or
``--no-system-prompt`` is given. Prints one line per file written. Exit status 2 on a bad
argument or missing input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m etagent.export", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="target", required=True)
    v = sub.add_parser("verl", help="verl RL parquet (schema of verl_valid_reference.parquet)")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", type=Path, help="an etagent run directory (uses rl/stage_<k> selections)")
    src.add_argument("--examples", type=Path, help="a JSONL of Examples to export whole")
    v.add_argument("--out", type=Path, required=True, help="output .parquet (per-stage files get _stage<k>)")
    v.add_argument("--stage", type=int, default=None, help="only this RL stage, written to --out exactly")
    v.add_argument("--train-examples", type=Path, default=None, help="default <run-dir>/world/train.jsonl")
    v.add_argument("--rl-dir", type=Path, default=None, help="default <run-dir>/rl")
    v.add_argument("--split", default="train", help="extra_info.split value (default train)")
    v.add_argument("--data-source", default=None, help="force one data_source (default by domain)")
    prompt = v.add_mutually_exclusive_group()
    prompt.add_argument("--system-prompt-file", type=Path, default=None, help="system prompt text file")
    prompt.add_argument("--no-system-prompt", action="store_true", help="omit the system message")
    v.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="etagent config override (repeatable) for the default system prompt, e.g. tools=with_calculator")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from etagent.export.verl import export_from_run, export_verl
    from etagent.records import Example, read_jsonl

    try:
        if args.no_system_prompt:
            system_prompt = None
        elif args.system_prompt_file is not None:
            system_prompt = args.system_prompt_file.read_text(encoding="utf-8").strip()
        else:  # the prompt of the configured tools (the run's environment, from the composed config)
            from etagent.config.compose import compose_etagent
            from etagent.runenv import RunEnv

            system_prompt = RunEnv.from_config(compose_etagent(args.override)).tool_prompt
        if args.run_dir is not None:
            written = export_from_run(
                args.run_dir,
                args.out,
                stage=args.stage,
                examples_path=args.train_examples,
                rl_dir=args.rl_dir,
                split=args.split,
                system_prompt=system_prompt,
                data_source=args.data_source,
            )
            for k, path in written.items():
                print(f"stage {k}: {path}")
        else:
            n = export_verl(
                read_jsonl(args.examples, Example),
                args.out,
                data_source=args.data_source,
                split=args.split,
                system_prompt=system_prompt,
            )
            print(f"{n} rows: {args.out}")
    except (FileNotFoundError, ValueError) as exc:
        print(f"[etagent.export] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
