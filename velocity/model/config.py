"""The one error for a bad params.yaml value, shared by the stages and the model code they configure.

The dataclasses each params.yaml section maps to carry no defaults: params.yaml is the one place
defaults live (velocity/params.py reads a section and names any missing or unknown key).
"""


class ParamsError(ValueError):
    """params.yaml lacks a section or key, has one we do not know, or holds a value out of range."""
