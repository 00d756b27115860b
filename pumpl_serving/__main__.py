"""``python -m pumpl_serving`` → :func:`pumpl_serving.cli.main`."""

import sys

from pumpl_serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
