"""optimum-cli commands of optimum-dynexec, registered through ``optimum/commands/register/register_dynexec.py``:

* ``optimum-cli export dynexec --model T --draft-model D OUT``: a ready-to-run speculative pair (:mod:`.export`);
* ``optimum-cli dynexec calibrate OUT``: calibrate the lookahead of an exported pair (:mod:`.dynexec`).

These modules stay light (argparse only at import); heavy imports happen inside ``run()``.
"""

from .common import CommandError, load_prompt_file

__all__ = ["CommandError", "load_prompt_file"]
