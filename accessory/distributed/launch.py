"""`python -m accessory.distributed.launch ...`: torchrun, with the same arguments, minus the Python
traceback torchrun prints when a worker fails. The failing rank has already printed its error (one
line for bad input); this exits with that rank's exit code."""
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun


def main() -> None:
    try:
        torchrun()
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        print(f"accessory: rank {rank} failed with exit code {failure.exitcode}; the job was stopped", file=sys.stderr)
        sys.exit(failure.exitcode if failure.exitcode > 0 else 1)


if __name__ == "__main__":
    main()
