"""Per-task recipes: each module reads top to bottom as teacher -> student for one task."""
