"""The root of edgekeras' exceptions.

Every error edgekeras raises on purpose (a bad argument, a missing file, a
conversion the converter refuses) derives from `EdgekerasError` as well as
from the built-in type it has always had (`ValueError`, `OSError`, ...), so
existing `except ValueError` code keeps working while

```python
try:
    ...
except edgekeras.EdgekerasError as error:
    print(error)
```

catches exactly the errors meant for the user. The command line prints these
as one line; anything else is a bug and keeps its traceback.
"""

__all__ = ["EdgekerasError"]


class EdgekerasError(Exception):
    """Base class of the errors edgekeras raises for bad input or unusable files."""
