"""featbench's HDF5 feature store: written by `extract`, read by `classify`."""
from features.errors import FeatbenchError, StoreError
from features.reader import FeatureStore, SplitData, open_store
from features.writer import Journal, write_store

__all__ = ["FeatbenchError", "StoreError", "FeatureStore", "SplitData", "open_store",
           "Journal", "write_store"]
