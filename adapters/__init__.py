"""Dataset adapters: every benchmark read as released, converted to one ``Sample`` type."""
