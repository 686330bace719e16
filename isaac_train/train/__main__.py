from ..distributed.lifecycle import begin

begin()  # before the command line's imports: a stop signal during start-up ends in exit 75 (lifecycle.py)

from .cli import main  # noqa: E402

main()
