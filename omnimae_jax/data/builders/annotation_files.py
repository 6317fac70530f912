"""A manual dir's annotation files (JSON, CSV) read into plain values, or one clear error.

Every error is a single line naming the file (and line, for a CSV row), what was wrong and what
was expected, so `prepare` can print it as is. The builders read all their annotation files with
these before looking at a single video: a malformed download fails in seconds, not after an hour of
decoding.
"""
import csv
import io
import json

from omnimae_jax.data.errors import DatasetNotPreparedError, LabelFileMismatchError


def _read_text(path, expected):
  # utf-8-sig: spreadsheet programs often save CSVs with a byte-order mark; it is not data.
  try:
    with open(path, encoding="utf-8-sig", newline="") as file:
      return file.read()
  except UnicodeDecodeError as error:
    raise LabelFileMismatchError(
        f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); expected {expected}"
    ) from error
  except OSError as error:
    raise DatasetNotPreparedError(
        f"{path} cannot be read ({error.strerror}); expected {expected}") from error


def load_json(path, expected):
  """The parsed content of a JSON file; `expected` describes it for the error message."""
  text = _read_text(path, expected)
  try:
    return json.loads(text)
  except json.JSONDecodeError as error:
    raise LabelFileMismatchError(
        f"{path} is not valid JSON ({error.msg}: line {error.lineno}, column {error.colno}); "
        f"expected {expected}") from error


def json_kind(value):
  """'an object', 'an array', ... : how a user would name a JSON value they wrote."""
  kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
           type(None): "null"}
  return kinds.get(type(value), "a number")


def read_csv(path, required_columns, expected):
  """[(line number, {column: stripped value})] of a CSV with a header naming `required_columns`
  (in any order, among others). A row whose field count differs from the header's is an error;
  blank lines are skipped."""
  reader = csv.reader(io.StringIO(_read_text(path, expected), newline=""))
  try:
    header = next(reader, None)
    if header is None:
      raise LabelFileMismatchError(f"{path} is empty; expected {expected}")
    columns = [name.strip() for name in header]
    missing = [column for column in required_columns if column not in columns]
    if missing:
      raise LabelFileMismatchError(
          f"{path}: header {','.join(columns)!r} lacks {','.join(missing)}; expected {expected}")
    rows = []
    for fields in reader:
      if not any(field.strip() for field in fields):
        continue
      if len(fields) != len(columns):
        raise LabelFileMismatchError(
            f"{path}:{reader.line_num}: {len(fields)} fields where the header has "
            f"{len(columns)}; expected {expected}")
      rows.append((reader.line_num, dict(zip(columns, (field.strip() for field in fields)))))
  except csv.Error as error:  # e.g. a NUL byte, an unterminated quote
    raise LabelFileMismatchError(
        f"{path}:{reader.line_num}: not readable as CSV ({error}); expected {expected}"
    ) from error
  return rows


def require_value(path, line, row, column, expected):
  """row[column], or an error naming the row when it is empty."""
  if not row[column]:
    raise LabelFileMismatchError(f"{path}:{line}: empty {column}; expected {expected}")
  return row[column]
