"""Sample data for calibration and evaluation: where it comes from and how it is batched."""

from tokcomp.data.batching import make_batches
from tokcomp.data.sources import Sample, catalogue_of, load_samples

__all__ = ["Sample", "catalogue_of", "load_samples", "make_batches"]
