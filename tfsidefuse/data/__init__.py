"""Data: schema, raw datasets and the readers that produce them."""

from tfsidefuse.data.demo import make_demo_dataset
from tfsidefuse.data.input_encoder import InputEncoder, RequestError
from tfsidefuse.data.partitioned import read_partitioned
from tfsidefuse.data.raw_dataset import RawDataset
from tfsidefuse.data.readers import read_recbole, read_s3rec, read_tfds_movielens
from tfsidefuse.data.schema import DatasetSchema, FeatureSpec, SchemaError

__all__ = [
    "DatasetSchema",
    "FeatureSpec",
    "InputEncoder",
    "RawDataset",
    "RequestError",
    "SchemaError",
    "make_demo_dataset",
    "read_partitioned",
    "read_recbole",
    "read_s3rec",
    "read_tfds_movielens",
]
