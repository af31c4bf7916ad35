"""zbatch's own wrapper adapters, registered in the `zbatch.wrappers` entry-point group."""
