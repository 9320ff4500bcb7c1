"""clkernel-loggers: where metric values go. Progress bars, text, CSV, JSON lines, TensorBoard and a final report.

Every logger is a training plugin implementing the kernel's ``log_metrics(state, values)`` event; none imports
clkernel-metrics. Values are recognised by type and by the documented naming scheme
``QUANTITY_GRANULARITY/PHASE/STREAM[/expNNN][/taskNNN][/classNNN]``. Only rank 0 writes.
"""

from clkernel_loggers.common import LoggerPathError, split_name
from clkernel_loggers.files import CSV_COLUMNS, CSVLogger, JSONLLogger, TextLogger
from clkernel_loggers.interactive import InteractiveLogger
from clkernel_loggers.report import ReportLogger
from clkernel_loggers.tensorboard import TensorBoardLogger

__version__ = "0.1.0"

__all__ = ["CSV_COLUMNS", "CSVLogger", "InteractiveLogger", "JSONLLogger", "LoggerPathError", "ReportLogger",
           "TensorBoardLogger", "TextLogger", "__version__", "split_name"]
