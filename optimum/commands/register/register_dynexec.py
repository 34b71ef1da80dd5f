# optimum-cli discovers plugin commands through the `optimum.commands.register` namespace (PEP 420: no
# __init__.py anywhere under optimum/), exactly as optimum-intel registers `export openvino`.
# Keep this import chain light: optimum-cli imports it at every start; the commands import torch / OpenVINO
# only inside run().

from optimum.commands.export.base import ExportCommand
from optimum_dynexec.commands.dynexec import DynexecCommand
from optimum_dynexec.commands.export import DynexecExportCommand


REGISTER_COMMANDS = [
    (DynexecExportCommand, ExportCommand),  # optimum-cli export dynexec --model T --draft-model D OUT
    DynexecCommand,  # optimum-cli dynexec calibrate OUT
]
