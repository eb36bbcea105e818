"""``python -m acmeq.worker '<WorkerOptions as JSON>'``: how a master starts a worker process."""

import sys

from acmeq.worker.process import main

if __name__ == "__main__":
    sys.exit(main())
