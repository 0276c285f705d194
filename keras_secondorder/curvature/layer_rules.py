"""Rules registered per layer class, as BackPACK maps each layer type to its extension.

bbprop and the Kronecker factors each keep one `RuleRegistry`: a layer is covered by the rule
of the nearest registered class in its MRO whose `call` it still uses (a subclass with a `call`
of its own may compute anything and needs a registration of its own).
"""

import keras


class RuleRegistry:
    """Layer class -> rule, for rules that are instances of `rule_class`.

    Args:
        rule_class: the class every registered rule must be an instance of.
        description: how the error names a valid rule.
    """

    def __init__(self, rule_class, description):
        self.rule_class, self.description = rule_class, description
        self._rules = {}

    def register(self, layer_class, rule):
        """Registers `rule` for `layer_class`; a ValueError names a wrong argument."""
        if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
            raise ValueError(f"`layer_class` must be a keras.layers.Layer subclass; received "
                             f"{layer_class!r}.")
        if not isinstance(rule, self.rule_class):
            raise ValueError(f"`rule` must be {self.description}; received {rule!r}.")
        self._rules[layer_class] = rule

    def lookup(self, layer):
        """The rule of `layer`, or `None` when no registered class computes its `call`."""
        for base in type(layer).__mro__:
            if base in self._rules and type(layer).call is base.call:
                return self._rules[base]
        return None
