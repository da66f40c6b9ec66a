"""European XFEL run files (the HDF5 layout EXtra-data reads) for Timepix3 data.

:class:`ExdfRunWriter` writes run directories of ``RAW-R{run:04d}-TPX{nn}-S{seq:05d}.h5``
files: hits and centroids per train as an instrument source, detector settings as
a control source. Layout in :mod:`.layout` and docs/exdf.md.
"""
from .errors import ExdfDtypeError, ExdfError, ExdfValueError, RunExistsError, TrainOrderError
from .layout import CENTROIDS_GROUP, DATA_FORMAT_VERSION, DEFAULT_SOURCE, HITS_GROUP, file_name
from .trains import write_trains
from .writer import ExdfRunWriter

__all__ = ["ExdfRunWriter", "write_trains", "ExdfError", "ExdfValueError", "ExdfDtypeError", "TrainOrderError",
           "RunExistsError", "DEFAULT_SOURCE", "HITS_GROUP", "CENTROIDS_GROUP", "DATA_FORMAT_VERSION",
           "file_name"]
