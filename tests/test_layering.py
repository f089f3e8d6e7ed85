"""The package layering: no module imports from a package above its own,
and no import circles (read from the source, nothing imported)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# fedjax_core's layers, lowest first; the top-level modules (algorithm,
# errors, streams, cohort) are the base every layer may use. `fedjax_core`'s
# own __init__ is the facade that re-exports from every layer.
LAYERS = ('', 'data', 'channel', 'toolkit', 'engine', 'adversary',
          'experiments')
# The distribution's packages, lowest first.
PACKAGES = ('fedjax_core', 'models', 'algorithms', 'scripts')


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


def _sources() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for package in PACKAGES
          for p in (ROOT / package).rglob('*.py')}


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """The modules of this distribution `name` imports: `from a.b import c`
  imports a.b.c if that is a module, else a.b."""
  found = set()
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.'))
                                           - node.level + 1] + [base])
      for alias in node.names:
        full = f'{base}.{alias.name}'
        found.add(full if full in modules else base)
  return {m for m in found if m in modules}


def _layer(module: str) -> int:
  parts = module.split('.')
  if len(parts) < 3 and not (len(parts) == 2 and parts[1] in LAYERS):
    return 0  # fedjax_core itself or a top-level module of it.
  return LAYERS.index(parts[1])


@pytest.fixture(scope='module')
def graph() -> dict[str, set[str]]:
  modules = _sources()
  return {name: _imports(name, path, modules)
          for name, path in modules.items()}


def test_every_fedjax_core_module_sits_in_a_known_layer(graph):
  for module in graph:
    parts = module.split('.')
    if parts[0] == 'fedjax_core' and len(parts) >= 3:
      assert parts[1] in LAYERS, f'{module} is in no layer of {LAYERS}'


def test_no_package_imports_from_a_package_above_it(graph):
  upward = []
  for module, imported in graph.items():
    rank = PACKAGES.index(module.split('.')[0])
    for target in imported:
      if PACKAGES.index(target.split('.')[0]) > rank:
        upward.append(f'{module} -> {target}')
  assert not upward, upward


def test_no_fedjax_core_layer_imports_from_a_layer_above_it(graph):
  upward = []
  for module, imported in graph.items():
    if not module.startswith('fedjax_core.') or module.count('.') == 0:
      continue
    for target in imported:
      if target == 'fedjax_core':
        upward.append(f'{module} -> the fedjax_core facade')
      elif target.startswith('fedjax_core.') and (
          _layer(target) > _layer(module)):
        upward.append(f'{module} -> {target}')
  assert not upward, upward


def test_no_import_circles(graph):
  """Depth-first search for a back edge among the modules."""
  state, stack, circles = {}, [], []

  def visit(module):
    state[module] = 'open'
    stack.append(module)
    for target in sorted(graph[module]):
      if state.get(target) == 'open':
        circles.append(stack[stack.index(target):] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module)
  assert not circles, [' -> '.join(c) for c in circles]


def test_the_checks_see_a_violation():
  """The graph reader finds the imports it must (else the tests above
  would pass vacuously)."""
  modules = _sources()
  rounds = _imports('fedjax_core.engine.rounds',
                    modules['fedjax_core.engine.rounds'], modules)
  assert 'fedjax_core.channel.stage' in rounds or (
      'fedjax_core.channel' in rounds)
  assert _layer('fedjax_core.engine.rounds') > _layer(
      'fedjax_core.channel.dp') > _layer('fedjax_core.errors')
