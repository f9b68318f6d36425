# Host-program (or benchmark-only) module, absent where the checks run: every name is Any.
from typing import Any

def __getattr__(name: str) -> Any: ...
