"""fxtaylor's version, in a leaf module that anything may import (the package root re-exports it)."""
__version__ = "0.1.0"
