"""clkernel-mlflow: a logger that records a clkernel run as one MLflow run (a local file store by default).

Names are imported on first use (``lazy_loader``), so importing the package, or its entry point
``clkernel_mlflow.registration``, imports neither torch nor mlflow.
"""

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, _lazy_all = lazy_loader.attach(
    __name__, submod_attrs={"logger": ["STATUSES", "MlflowLogger", "metric_key", "params_of"]})

__all__ = sorted([*_lazy_all, "__version__"])
