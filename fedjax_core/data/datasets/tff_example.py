"""`tf.train.Example` protocol buffers, read and written without TensorFlow.

The message classes are built at import from a descriptor equal to
TensorFlow's `tensorflow/core/example/example.proto` and `feature.proto`
(package `tensorflow`, proto3; same message names, field names and numbers),
so they parse and serialize the same bytes as `tf.train.Example`:

    message BytesList { repeated bytes value = 1; }
    message FloatList { repeated float value = 1 [packed = true]; }
    message Int64List { repeated int64 value = 1 [packed = true]; }
    message Feature {
      oneof kind {
        BytesList bytes_list = 1;
        FloatList float_list = 2;
        Int64List int64_list = 3;
      }
    }
    message Features { map<string, Feature> feature = 1; }
    message Example { Features features = 1; }

They live in a private descriptor pool, so they never clash with
TensorFlow's own classes when both are imported.

Examples:
  >>> data = serialize_example({'label': 3, 'pixels': np.zeros(2, np.float32)})
  >>> parse_example(data)['label']
  array([3])
"""

from collections.abc import Mapping, Sequence

import numpy as np
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

_PACKAGE = 'tensorflow'
_FIELD = descriptor_pb2.FieldDescriptorProto


def _add_message(file_proto, name: str, fields, oneof: str | None = None):
  """Adds message `name` with `fields`: (name, number, type, label,
  type_name, packed) tuples; all fields join the oneof `oneof` if given."""
  message = file_proto.message_type.add(name=name)
  if oneof:
    message.oneof_decl.add(name=oneof)
  for field_name, number, field_type, label, type_name, packed in fields:
    field = message.field.add(name=field_name, number=number,
                              type=field_type, label=label)
    if type_name:
      field.type_name = type_name
    if packed:
      field.options.packed = True
    if oneof:
      field.oneof_index = 0
  return message


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
  """The messages of TensorFlow's example.proto and feature.proto."""
  proto = descriptor_pb2.FileDescriptorProto(
      name='fedjax_core/tensorflow_example.proto', package=_PACKAGE,
      syntax='proto3')
  repeated, optional = _FIELD.LABEL_REPEATED, _FIELD.LABEL_OPTIONAL
  _add_message(proto, 'BytesList',
               [('value', 1, _FIELD.TYPE_BYTES, repeated, None, False)])
  _add_message(proto, 'FloatList',
               [('value', 1, _FIELD.TYPE_FLOAT, repeated, None, True)])
  _add_message(proto, 'Int64List',
               [('value', 1, _FIELD.TYPE_INT64, repeated, None, True)])
  _add_message(proto, 'Feature', [
      (f'{kind}_list', number, _FIELD.TYPE_MESSAGE, optional,
       f'.{_PACKAGE}.{kind.capitalize()}List', False)
      for number, kind in enumerate(('bytes', 'float', 'int64'), start=1)
  ], oneof='kind')
  features = _add_message(proto, 'Features', [
      ('feature', 1, _FIELD.TYPE_MESSAGE, repeated,
       f'.{_PACKAGE}.Features.FeatureEntry', False)])
  entry = features.nested_type.add(name='FeatureEntry')
  entry.options.map_entry = True
  entry.field.add(name='key', number=1, type=_FIELD.TYPE_STRING,
                  label=optional)
  entry.field.add(name='value', number=2, type=_FIELD.TYPE_MESSAGE,
                  label=optional, type_name=f'.{_PACKAGE}.Feature')
  _add_message(proto, 'Example', [
      ('features', 1, _FIELD.TYPE_MESSAGE, optional,
       f'.{_PACKAGE}.Features', False)])
  return proto


def _message_classes() -> dict[str, type]:
  pool = descriptor_pool.DescriptorPool()
  pool.Add(_file_descriptor())
  return {name: message_factory.GetMessageClass(
      pool.FindMessageTypeByName(f'{_PACKAGE}.{name}'))
          for name in ('BytesList', 'FloatList', 'Int64List', 'Feature',
                       'Features', 'Example')}


_CLASSES = _message_classes()
BytesList = _CLASSES['BytesList']
FloatList = _CLASSES['FloatList']
Int64List = _CLASSES['Int64List']
Feature = _CLASSES['Feature']
Features = _CLASSES['Features']
Example = _CLASSES['Example']

Value = np.ndarray | list[bytes]


def _values(feature) -> Value:
  """A feature's values: float32 or int64 array, or a list of bytes; an
  empty list for a feature of no kind."""
  kind = feature.WhichOneof('kind')
  if kind == 'float_list':
    return np.array(feature.float_list.value, np.float32)
  if kind == 'int64_list':
    return np.array(feature.int64_list.value, np.int64)
  if kind == 'bytes_list':
    return list(feature.bytes_list.value)
  return []


def parse_example(serialized: bytes) -> dict[str, Value]:
  """The features of a serialized `tf.train.Example`.

  Args:
    serialized: the bytes of one `tf.train.Example`.

  Returns:
    Each feature's values, flat: a float32 `[k]` array for a float list, an
    int64 `[k]` array for an int64 list, a list of bytes for a bytes list
    (an empty list for a feature of no kind).

  Raises:
    google.protobuf.message.DecodeError: on bytes that are not a message.
  """
  example = Example.FromString(serialized)
  return {name: _values(feature)
          for name, feature in example.features.feature.items()}


def _feature(value) -> 'Feature':
  """A `Feature` holding `value`: bytes or str (or a sequence of them), or
  numbers, kept as int64 if integer or bool and as float otherwise."""
  if isinstance(value, (bytes, str)):
    value = [value]
  if (isinstance(value, (list, tuple)) and value
      and isinstance(value[0], (bytes, str))):
    return Feature(bytes_list=BytesList(value=[
        v.encode() if isinstance(v, str) else v for v in value]))
  array = np.asarray(value).reshape(-1)
  if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
    return Feature(int64_list=Int64List(value=array.astype(np.int64)))
  return Feature(float_list=FloatList(value=array.astype(np.float32)))


def serialize_example(features: Mapping[str, object]) -> bytes:
  """The bytes of a `tf.train.Example` holding `features`.

  Args:
    features: feature name -> value: bytes or str (or a list of them) for a
      bytes list; integer or bool numbers or arrays for an int64 list;
      other numbers or arrays for a float list. Arrays are flattened.

  Returns:
    The serialized `tf.train.Example`.
  """
  example = Example()
  for name, value in features.items():
    example.features.feature[name].CopyFrom(_feature(value))
  return example.SerializeToString()


def _list_of(dtype) -> str:
  """The kind of list a feature read as `dtype` must be."""
  if dtype is bytes:
    return 'bytes_list'
  return ('float_list' if np.issubdtype(dtype, np.floating)
          else 'int64_list')


def parse_fixed(serialized: Sequence[bytes],
                spec: Mapping[str, tuple[tuple[int, ...], type]]
                ) -> dict[str, np.ndarray | list[bytes]]:
  """A batch of examples whose features all have fixed shapes, stacked, as
  `tf.io.parse_example` with `tf.io.FixedLenFeature`s.

  Args:
    serialized: `n` serialized `tf.train.Example`s.
    spec: feature name -> (shape, dtype): a floating dtype reads a float
      list, an integer dtype an int64 list (e.g. `np.uint8` for pixels kept
      as int64; converted without a range check, as `tf.cast` does) and
      `bytes` a bytes list (shape `()`).

  Returns:
    name -> `[n, *shape]` array of that dtype, or a list of `n` bytes.

  Raises:
    ValueError: if a feature of an example does not hold as many values of
      the kind as its shape (a missing feature or one of another kind holds
      none).
  """
  n = len(serialized)
  columns = []
  for name, (shape, dtype) in spec.items():
    size = int(np.prod(shape))
    # Single values and bytes gather in a list (a numpy row assignment
    # costs microseconds); longer ones go straight into their row.
    out = [] if size == 1 or dtype is bytes else np.empty((n, size), dtype)
    columns.append((name, _list_of(dtype), size, out))
  for row, data in enumerate(serialized):
    feature_map = Example.FromString(data).features.feature
    for name, kind, size, out in columns:
      values = getattr(feature_map[name], kind).value
      if len(values) != size:
        raise ValueError(
            f"Example {row}: feature '{name}' should hold {size} values in "
            f'a {kind}; found {len(values)}.')
      if isinstance(out, list):
        out.extend(values)
      else:
        out[row] = values
  return {name: _stacked(out, n, *spec[name]) for name, _, _, out in columns}


def _stacked(out, n: int, shape: tuple[int, ...], dtype):
  """`parse_fixed`'s values of one feature: `out` as `[n, *shape]`."""
  if dtype is bytes:
    return out
  return np.asarray(out, dtype).reshape(n, *shape)
