"""Errors a user can act on: each names the path involved and how to prepare the data."""


class DatasetNotPreparedError(FileNotFoundError):
  """A dataset, split or manual-download folder is missing or laid out differently than expected."""


class LabelFileMismatchError(ValueError):
  """Annotation files and video files of a manual dir do not describe the same dataset."""


class CorruptDataError(RuntimeError):
  """Prepared data is damaged beyond skipping single records: a TFRecord file that fails its
  checksum or ends mid-record, or a split where most records cannot be decoded."""
