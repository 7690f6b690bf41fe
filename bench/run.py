"""Benchmark of issue 7: training, tokenizing, disk and no-op `dvc repro`, side by side on one machine.

    python -m bench.run --part all --scale full          # the issue's figures (see BENCHMARKS.md)
    python -m bench.run --part tokenize --scale small    # a quick smoke run of one part

Each part is a module of its own, also runnable alone (`python -m bench.<module> --help`), and writes
`<results dir>/<part>.json` (default `bench/results/`) and prints a Markdown table; `--part all` runs
them in turn and also writes `summary.md` with every table.

- `lengths` (`bench.lengths`): the synthetic generator's review length per `data.synthetic_length_scale`;
- `train` (`bench.train_speed`): the project's train stage against the tutorial's recipe;
- `tokenize` (`bench.tokenize_speed`): prepare and tokenize at size, timed, and `data/tokenized`'s size;
- `noop` (`bench.noop`): the DVC cache's size and a `dvc repro` with nothing to do.

Every run happens in a fresh git + DVC repository under `--workdir` (default: the system temp dir),
built by `bench.harness.make_repo`. Nothing in this checkout is touched but the results dir.
"""

from __future__ import annotations

from bench import harness, lengths, noop, tokenize_speed, train_speed

PARTS = {"lengths": lengths, "train": train_speed, "tokenize": tokenize_speed, "noop": noop}


def main(argv: list[str] | None = None) -> None:
    parser = harness.new_parser(__doc__)
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    for module in PARTS.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    results = harness.run_parts(args, list(PARTS.values()) if args.part == "all" else [PARTS[args.part]])
    if args.part == "all":
        summary = args.results_dir / "summary.md"
        tables = "\n\n".join(result["markdown"] for result in results)
        summary.write_text(f"<!-- {harness.command_line()} -->\n\n{tables}\n")
        print(f"bench: wrote {summary}")


if __name__ == "__main__":
    main()
