"""Stand-in for ``slicer.ScriptedLoadableModule`` in slicer-core tests.

Slicer's own file (Base/Python/slicer/ScriptedLoadableModule.py) builds Qt widgets; slicer-core has
no Qt. These classes keep what a module's logic relies on: ``ScriptedLoadableModuleLogic`` finds or
makes the module's singleton parameter node exactly as Slicer's does (``GetSingletonNode`` with the
module name, a ``vtkMRMLScriptedModuleNode`` with the "ModuleName" attribute). The module and widget
classes only have to exist so that the module file imports; they are not run here.
"""

import unittest

import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
           "ScriptedLoadableModuleWidget"]


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__.removesuffix("Widget")


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__.removesuffix("Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        parameterNode = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if parameterNode:
            if parameterNode.GetAttribute("ModuleName") != self.moduleName:
                parameterNode.SetAttribute("ModuleName", self.moduleName)
            return parameterNode
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        print(message)
