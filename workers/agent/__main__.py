"""``python -m workers.agent``: run the agent until it is drained (see ``cli``)."""

import sys

from workers.agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
