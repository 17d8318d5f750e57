"""Getting workers to a manager: the factory, batch systems, and the catalog of project names.

Imports the floor and ``core.wire``; a factory talks to a manager only over its port.
"""
