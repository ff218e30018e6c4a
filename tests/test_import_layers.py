"""The package's imports run one way: model <- generation <- (evaluation, serving, training) <- commands.

Every ``import`` of a ``trimode`` module, at module level or inside a function (a lazy
import is still a dependency), is read from the source with ``ast``; a module may import
only modules of its own layer or below, and the module graph has no cycle.
"""

import ast
from pathlib import Path

import pytest

import trimode

PACKAGE = Path(trimode.__file__).parent

LAYERS = [
    # 0: the model and what it is made of (configs, cache, masks, loading and conversion of checkpoints)
    {"trimode", "trimode._lazy", "trimode._registration", "trimode.assembly", "trimode.cache", "trimode.cache_dir", "trimode.checkpoint_files", "trimode.compiled",
     "trimode.configuration", "trimode.configuration_vlm", "trimode.conversion", "trimode.export", "trimode.image_processing", "trimode.image_tasks", "trimode.loading", "trimode.loss",
     "trimode.masks", "trimode.modeling", "trimode.modeling_vlm", "trimode.tokenization", "trimode.projections", "trimode.drafter_gate", "trimode.backbone",
     "trimode.typed_config", "trimode.vllm_plugin", "trimode.vllm_models"},
    # 1: decoding
    {"trimode.generation"},
    # 2: what uses the decoders
    {"trimode.data", "trimode.evaluation", "trimode.serving", "trimode.training"},
    # 3: the command line
    {"trimode.commands", "trimode.cli"},
]

# The model class carries the decoding methods (``model.generate(...)``), as transformers'
# PreTrainedModel carries GenerationMixin: the one import from a layer above, and only of the
# module that defines the mixin (the graph test below proves it closes no cycle).
ALLOWED_UPWARD = {("trimode.modeling", "trimode.generation.api")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or (prefix != "trimode" and module.startswith(prefix + ".")):
                best = i
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def imports_of(path: Path) -> set[str]:
    """trimode modules that ``path`` imports (``from . import x`` resolved to the submodule when it is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "trimode")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "trimode":
                continue
            for alias in node.names:  # `from .x import y`: y may be a submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return {m for m in found if m != name}


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in g.items():
        for target in targets:
            if layer_of(target) > layer_of(module) and (module, target) not in ALLOWED_UPWARD:
                bad.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    return sorted(bad)


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as a path, or None. Package ``__init__`` modules that only name
    their submodules lazily are nodes like any other."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_imports_from_a_layer_above():
    assert upward_imports(graph()) == []


def test_the_import_graph_has_no_cycle():
    assert find_cycle(graph()) is None


def test_no_test_fixture_inside_the_package():
    fixtures = [module_name(p) for p in PACKAGE.rglob("*.py") if p.stem in ("tiny", "fixtures", "conftest")
                or p.stem.startswith("test_")]
    assert fixtures == []


@pytest.mark.parametrize("source, expect", [
    ({"trimode.generation.loop": {"trimode.evaluation.metrics"}}, "upward"),
    ({"trimode.cache": {"trimode.masks"}, "trimode.masks": {"trimode.cache"}}, "cycle"),
])
def test_the_checks_catch_what_they_are_for(source, expect):
    # The walker on a made-up graph: an upward edge and a cycle are both reported.
    if expect == "upward":
        assert upward_imports(source) == ["trimode.generation.loop (layer 1) imports trimode.evaluation.metrics "
                                          "(layer 2)"]
    else:
        assert find_cycle(source) == ["trimode.cache", "trimode.masks", "trimode.cache"]


def test_relative_imports_are_resolved(tmp_path):
    names = imports_of(PACKAGE / "generation" / "modes.py")
    assert "trimode.masks" in names and "trimode.generation.loop" in names
