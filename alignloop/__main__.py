import sys

from alignloop.cli import main

if __name__ == "__main__":  # vLLM spawns workers: the guard keeps them from re-running main
    sys.exit(main())
