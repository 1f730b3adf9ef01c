"""The commands of `python -m susy_pipeline COMMAND`, one module each, named as the command is
(`run_local.py` is `run-local`).

Every module has `add_parser(subparsers)`, which declares the command's options (their
environment defaults included), and `run(args)`, which calls the command's function with plain
keyword arguments; `run-local` calls those functions directly. The commands import the library
(the modules of `susy_pipeline` itself: the pipeline's stages); none imports `cli`, and no
library module imports this package.
"""
