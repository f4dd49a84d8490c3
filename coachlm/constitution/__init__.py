"""Constitutional AI (Bai et al., 2022): the constitution format and its default principles.

    load_constitution(path)        # validated Constitution; None: the built-in default
    constitution.principle("harmless").comparison_question

`format` holds the YAML format and its checks; `default.yaml` the default principles.
"""

from coachlm.constitution.format import (ComparisonExample, Constitution, ConstitutionError,
                                         CritiqueExample, Principle, default_constitution,
                                         load_constitution, parse_constitution)

__all__ = ["ComparisonExample", "Constitution", "ConstitutionError", "CritiqueExample",
           "Principle", "default_constitution", "load_constitution", "parse_constitution"]
