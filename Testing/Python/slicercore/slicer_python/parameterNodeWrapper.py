"""Stand-in for ``slicer.parameterNodeWrapper`` in slicer-core tests: typed parameters, no GUI binding.

Slicer's package (Base/Python/slicer/parameterNodeWrapper/) also binds Qt widgets, which slicer-core
cannot host. This keeps its storage rules for the types a module declares, as its serializers
write them into the ``vtkMRMLScriptedModuleNode``: numbers as ``str(value)``, booleans as
"True"/"False", strings as they are, nodes (or a Union of node types and None) as a node reference
of the parameter's name next to an empty parameter; ``Default``, ``Choice`` and ``WithinRange``
annotations give defaults and checks. ``Decimals`` and ``SingleStep`` only matter to widgets.
Binding widgets (``connectGui``) is left to the in-Slicer self-test.
"""

import typing

import slicer

__all__ = ["Choice", "Decimals", "Default", "SingleStep", "WithinRange", "parameterNodeWrapper"]


class Default:
    def __init__(self, value=None):
        self.value = value


class Choice:
    def __init__(self, choices):
        self.choices = choices

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Decimals:
    def __init__(self, value):
        self.value = value


class SingleStep:
    def __init__(self, value):
        self.value = value


def _nodeTypes(kind):
    kinds = typing.get_args(kind) if typing.get_origin(kind) is typing.Union else (kind,)
    nodes = tuple(k for k in kinds if isinstance(k, type) and issubclass(k, slicer.vtkMRMLNode))
    return nodes if nodes and all(k in nodes or k is type(None) for k in kinds) else None


class _Parameter:
    def __init__(self, name, annotation):
        kind, extras = annotation, ()
        if typing.get_origin(annotation) is typing.Annotated:
            kind, *extras = typing.get_args(annotation)
        self.name, self.kind = name, kind
        self.nodeTypes = _nodeTypes(kind)
        self.validators = [extra for extra in extras if hasattr(extra, "validate")]
        defaults = [extra.value for extra in extras if isinstance(extra, Default)]
        self.default = defaults[0] if defaults else (None if self.nodeTypes else kind())

    def write(self, node, value):
        if self.nodeTypes:
            if value is not None and not isinstance(value, self.nodeTypes):
                raise TypeError(f"{self.name}: value must be one of {self.nodeTypes}, is {type(value)}")
            node.SetParameter(self.name, "")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        if not isinstance(value, self.kind if self.kind is not float else (int, float)):
            raise TypeError(f"{self.name}: value must be of type {self.kind}, is {type(value)}")
        for validator in self.validators:
            validator.validate(value)
        node.SetParameter(self.name, ("True" if value else "False") if self.kind is bool else str(value))

    def read(self, node):
        if not node.HasParameter(self.name):
            self.write(node, self.default)
        if self.nodeTypes:
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        return text == "True" if self.kind is bool else self.kind(text)


def parameterNodeWrapper(classtype):
    """Give ``classtype`` one typed property per annotated member, stored in the wrapped parameter node."""
    parameters = {name: _Parameter(name, annotation)
                  for name, annotation in typing.get_type_hints(classtype, include_extras=True).items()}

    def init(self, parameterNode):
        self.parameterNode = parameterNode
        for parameter in parameters.values():
            if not parameterNode.HasParameter(parameter.name):
                parameter.write(parameterNode, parameter.default)

    for parameter in parameters.values():
        setattr(classtype, parameter.name, property(
            lambda self, p=parameter: p.read(self.parameterNode),
            lambda self, value, p=parameter: p.write(self.parameterNode, value)))
    classtype.__init__ = init
    classtype.allParameters = parameters
    return classtype
