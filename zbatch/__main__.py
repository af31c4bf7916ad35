from __future__ import annotations

from zbatch.cli import main

main()
