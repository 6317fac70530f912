"""Benchmarks that print figures (they are scripts, not timed tests).

  python -m omnimae_jax.benchmark input [flags]   host input pipeline throughput per CPU core
  python -m omnimae_jax.benchmark step --config=F  training step time, samples/s and MFU
  python -m omnimae_jax.benchmark compile --config=F --target=v5e:4x4  per-device memory of the
      train steps compiled for an accelerator this machine need not have (AOT)

Each command lives in its own module exposing `add_arguments(parser)` and `run(args)`; add a
command by adding one line to COMMANDS.
"""
import argparse
import importlib
import sys

# command -> (module, one-line help). Modules are imported when the parser is built, so keep
# their top level light (import TensorFlow/JAX inside run()).
COMMANDS = {
    "input": ("omnimae_jax.data.benchmark_input",
              "input pipeline: images/s and clips/s per CPU core, with and without replication"),
    "step": ("omnimae_jax.train.benchmark_step",
             "training step: compile time, step time, samples/s and MFU per modality"),
    "compile": ("omnimae_jax.train.aot_compile",
                "AOT: compile the train steps for a TPU/GPU target; per-device memory, fits?"),
}


def build_parser():
  parser = argparse.ArgumentParser(prog="python -m omnimae_jax.benchmark",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  for name, (module_name, help_text) in COMMANDS.items():
    module = importlib.import_module(module_name)
    command = commands.add_parser(name, help=help_text, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(command)
    command.set_defaults(run=module.run)
  return parser


def main(argv=None):
  args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
  return args.run(args)  # an exit status (None: 0)


if __name__ == "__main__":
  sys.exit(main())
