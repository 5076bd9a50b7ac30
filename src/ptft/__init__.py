"""ptft: pretrain a backbone, hand it to a downstream task, sweep it from the command line.

Importing the package is cheap on purpose (no torch, no Lightning): the command-line
entry points answer ``--help`` and ``--cfg job`` without loading the heavy stack.
"""

__version__ = "0.1.0"
