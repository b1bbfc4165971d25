"""featbench's HDF5 feature store: written by `extract`, read by `classify`."""
from features.errors import FeatbenchError, StoreError
from features.reader import FeatureStore, SplitData, open_store
from features.records import Extraction, ModelMetrics, StoreMeta
from features.writer import Journal, write_store

__all__ = ["FeatbenchError", "StoreError", "FeatureStore", "SplitData", "open_store",
           "Extraction", "ModelMetrics", "StoreMeta", "Journal", "write_store"]
