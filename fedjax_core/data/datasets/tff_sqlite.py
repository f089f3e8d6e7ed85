"""TensorFlow Federated's SQLite client data, read without TensorFlow.

TFF ships its federated benchmarks (EMNIST, Shakespeare, CIFAR-100,
StackOverflow) as SQLite files read by
`tff.simulation.datasets.SqlClientData` (tensorflow_federated/python/
simulation/datasets/sql_client_data.py). Their schema: the tables as TFF's
`sql_client_data_utils.save_to_sql_client_data` writes them, with the
indexes FedJAX's `TFFSQLiteClientsIterator` (fedjax/core/
sqlite_federated_data.py) documents:

    CREATE TABLE examples (
        split_name TEXT NOT NULL,
        client_id TEXT NOT NULL,
        serialized_example_proto BLOB NOT NULL);
    CREATE INDEX idx_examples_client_id ON examples (client_id);
    CREATE INDEX idx_examples_client_id_split
        ON examples (split_name, client_id);
    CREATE TABLE client_metadata (
        client_id TEXT NOT NULL,
        split_name TEXT NOT NULL,
        num_examples INTEGER NOT NULL);
    CREATE INDEX idx_metadata_client_id ON client_metadata (client_id);

One row of `examples` is one serialized `tf.train.Example`
(`tff_example`); `client_metadata` lists each split's clients, as TFF's
`SqlClientData.client_ids` reads them.

`read_splits` turns whole splits into numpy arrays with no Python object per
client: SQLite numbers the clients (a temporary table of keys, joined to the
examples), streams the rows ordered by client in batches (`fetchmany`), and
a caller's batch decoder turns each batch of serialized examples into
arrays. `write_sqlite` writes the same schema (tests, generator scripts).

Examples:
  >>> import tempfile
  >>> from fedjax_core.data.datasets import tff_example
  >>> path = os.path.join(tempfile.mkdtemp(), 'data.sqlite')
  >>> write_sqlite(path, {'train': [
  ...     ('b', tff_example.serialize_example({'v': 5})),
  ...     ('a', tff_example.serialize_example({'v': 7}))]})
  >>> def decode(serialized):
  ...   return tff_example.parse_fixed(serialized, {'v': ((), np.int64)})
  >>> split = read_splits(path, ['train'], decode)['train']
  >>> split.features['v'], split.keys
  (array([7, 5]), array([0, 1]))
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
import os
import pathlib
import sqlite3
from typing import NamedTuple

import numpy as np
import tqdm

# Key of a decoder's output that maps each output row to the example (its
# index in the batch) it came from, for decoders that make several rows, or
# none, of one example.
SOURCE = 'source'
BATCH_SIZE = 4096
_MIN_EXAMPLES_FOR_PROGRESS = 10_000

_SCHEMA = (
    'CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT '
    'NULL, serialized_example_proto BLOB NOT NULL)',
    'CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT '
    'NOT NULL, num_examples INTEGER NOT NULL)',
)
_INDEXES = (
    'CREATE INDEX idx_examples_client_id ON examples (client_id)',
    'CREATE INDEX idx_examples_client_id_split ON examples (split_name, '
    'client_id)',
    'CREATE INDEX idx_metadata_client_id ON client_metadata (client_id)',
)
_REQUIRED_COLUMNS = {
    'examples': {'split_name', 'client_id', 'serialized_example_proto'},
    'client_metadata': {'client_id', 'split_name', 'num_examples'},
}

Decoder = Callable[[list[bytes]], dict[str, np.ndarray]]


class Split(NamedTuple):
  """One split's decoded rows, ordered by client.

  Attributes:
    features: name -> `[n, ...]` array, as the decoder made them, its
      batches concatenated.
    keys: `[n]` int64 client key of each row (see `read_splits`).
  """

  features: dict[str, np.ndarray]
  keys: np.ndarray


def write_sqlite(path: str | os.PathLike,
                 splits: Mapping[str, Iterable[tuple[str, bytes]]]) -> None:
  """Writes client data in TFF's SQLite schema (module docstring).

  Args:
    path: the file to create.
    splits: split name -> (client id, serialized `tf.train.Example`) of
      each row, in the order the rows are stored. `client_metadata` gets one
      row per split and client, with its number of examples.

  Raises:
    FileExistsError: if `path` exists.
  """
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; not overwriting it.')
  connection = sqlite3.connect(path)
  try:
    with connection:
      for statement in _SCHEMA:
        connection.execute(statement)
      for split, rows in splits.items():
        connection.executemany(
            'INSERT INTO examples (split_name, client_id, '
            'serialized_example_proto) VALUES (?, ?, ?)',
            ((split, client, data) for client, data in rows))
      connection.execute(
          'INSERT INTO client_metadata (client_id, split_name, num_examples)'
          ' SELECT client_id, split_name, COUNT(*) FROM examples GROUP BY '
          'split_name, client_id ORDER BY split_name, client_id')
      for statement in _INDEXES:
        connection.execute(statement)
  finally:
    connection.close()


def _connect(path: str | os.PathLike) -> sqlite3.Connection:
  """A read-only connection to `path`, checked for TFF's tables.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: if a table or column of TFF's schema is missing.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No such file: {path}')
  uri = pathlib.Path(path).absolute().as_uri() + '?mode=ro'
  connection = sqlite3.connect(uri, uri=True)
  for table, required in _REQUIRED_COLUMNS.items():
    columns = {row[1] for row in
               connection.execute(f'PRAGMA table_info({table})')}
    if not required <= columns:
      connection.close()
      raise ValueError(
          f'{path} is not in TFF\'s SQLite format: table {table} lacks '
          f'column(s) {sorted(required - columns)}.')
  return connection


def _make_keys(connection: sqlite3.Connection, splits: Sequence[str],
               shared_clients: bool) -> None:
  """Fills the temporary table `client_keys(split_name, client_id, key)`
  with the key of each client of `splits` in `client_metadata`."""
  connection.execute('CREATE TEMP TABLE wanted_splits (split_name TEXT '
                     'PRIMARY KEY, position INTEGER)')
  connection.executemany('INSERT INTO temp.wanted_splits VALUES (?, ?)',
                         [(split, i) for i, split in enumerate(splits)])
  connection.execute(
      'CREATE TEMP TABLE client_keys (split_name TEXT, client_id TEXT, key '
      'INTEGER, PRIMARY KEY (split_name, client_id)) WITHOUT ROWID')
  order = 'm.client_id' if shared_clients else 's.position, m.client_id'
  connection.execute(
      'INSERT INTO temp.client_keys SELECT m.split_name, m.client_id, '
      f'DENSE_RANK() OVER (ORDER BY {order}) - 1 FROM (SELECT DISTINCT '
      'split_name, client_id FROM client_metadata) AS m JOIN '
      'temp.wanted_splits AS s ON s.split_name = m.split_name')


def _concatenate(batches: list[dict[str, np.ndarray]]
                 ) -> dict[str, np.ndarray]:
  return {name: np.concatenate([batch[name] for batch in batches])
          for name in batches[0]}


def _read_split(connection: sqlite3.Connection, split: str, decode: Decoder,
                batch_size: int, desc: str) -> Split:
  """Decodes the rows of `split` whose client has a key, by client."""
  total, = connection.execute(
      'SELECT COALESCE(SUM(num_examples), 0) FROM client_metadata WHERE '
      'split_name = ?', (split,)).fetchone()
  cursor = connection.execute(
      'SELECT k.key, e.serialized_example_proto FROM examples AS e JOIN '
      'temp.client_keys AS k ON k.split_name = e.split_name AND k.client_id '
      '= e.client_id WHERE e.split_name = ? ORDER BY e.client_id, e.rowid',
      (split,))
  batches, keys = [], []
  with tqdm.tqdm(total=total, desc=f'{desc} {split}', unit='ex',
                 disable=total < _MIN_EXAMPLES_FOR_PROGRESS) as bar:
    while rows := cursor.fetchmany(batch_size):
      batch_keys = np.array([row[0] for row in rows], np.int64)
      decoded = decode([row[1] for row in rows])
      source = decoded.pop(SOURCE, None)
      batches.append(decoded)
      keys.append(batch_keys if source is None else batch_keys[source])
      bar.update(len(rows))
  if not batches:
    batches = [decode([])]
    batches[0].pop(SOURCE, None)
    keys = [np.zeros(0, np.int64)]
  return Split(_concatenate(batches), np.concatenate(keys))


def read_splits(path: str | os.PathLike, splits: Sequence[str],
                decode: Decoder, *, shared_clients: bool = True,
                batch_size: int = BATCH_SIZE,
                desc: str | None = None) -> dict[str, Split]:
  """Reads whole splits of a TFF SQLite file into arrays, keyed by client.

  The clients are those `client_metadata` lists for `splits`; examples of
  other clients are skipped. Each client gets an int key, in one key space
  for all `splits`:
    * `shared_clients=True` (a client id names the same writer or speaker
      in every split, as in TFF's EMNIST and Shakespeare): the key of a
      client is the index of its id among the sorted distinct ids of
      `splits`, so its rows in every split share the key.
    * `shared_clients=False` (each split has its own clients, as TFF's
      CIFAR-100 test clients '0'..'99' are not its training clients
      '0'..'99'): the clients of `splits[0]` by sorted id get keys
      `0..c0-1`, those of `splits[1]` the next keys, and so on.
  Ids sort by their UTF-8 bytes (SQLite's BINARY collation, the order of
  Python's `sorted` on str).

  Rows come ordered by client id, then in stored order. Batches of
  `batch_size` serialized examples go to `decode`, which returns name ->
  array with one leading row per output row; an output may hold several
  rows, or none, per example if it maps each row to its example (its index
  in the batch) under the name `SOURCE`. A progress bar shows for a split
  of at least 10,000 examples.

  Args:
    path: the SQLite file.
    splits: split names (`split_name` values) to read, e.g. ('train',
      'test').
    decode: batch decoder, e.g. built on `tff_example.parse_fixed`; called
      once with an empty list for a split without rows.
    shared_clients: whether a client id names one client across splits.
    batch_size: examples per `decode` call.
    desc: name shown on the progress bar (default: the file's name).

  Returns:
    split name -> `Split(features, keys)`.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: if the file lacks a table or column of TFF's schema.
  """
  connection = _connect(path)
  try:
    _make_keys(connection, splits, shared_clients)
    desc = desc or os.path.basename(path)
    return {split: _read_split(connection, split, decode, batch_size, desc)
            for split in splits}
  finally:
    connection.close()
